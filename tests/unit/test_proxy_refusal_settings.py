"""KEEL_PROXY_RUNTIME_API: addresses HAProxy's runtime API can be reached at, and refused where
a refusal would not be the fleet's (several processes deciding each for its own share)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keel.config import Settings, proxy_runtime_apis
from keel.ratelimit.proxy_refusals import clearing, commands, parse_address


def test_runtime_api_addresses() -> None:
    assert parse_address("unix:/run/haproxy/admin.sock") == "/run/haproxy/admin.sock"
    assert parse_address("haproxy:9999") == ("haproxy", 9999)
    assert parse_address("[::1]:9999") == ("::1", 9999)
    for bad in ("haproxy", "haproxy:", ":9999", "haproxy:http", "haproxy:70000", "unix:", "a..b:9999"):
        with pytest.raises(ValueError, match=r"unix:/path or host:port|no socket path"):
            parse_address(bad)
    assert proxy_runtime_apis(" a:1, unix:/b ,") == ["a:1", "unix:/b"]
    with pytest.raises(ValidationError, match="unix:/path or host:port"):
        Settings(proxy_runtime_api="a:1,haproxy")


def test_the_runtime_api_needs_redis_when_several_processes_share_the_limits() -> None:
    assert Settings(proxy_runtime_api="haproxy:9999").proxy_runtime_api == "haproxy:9999"  # alone
    with pytest.raises(ValidationError, match="needs KEEL_REDIS_URL"):
        Settings(proxy_runtime_api="haproxy:9999", ratelimit_nodes=2)
    shared = Settings(proxy_runtime_api="haproxy:9999", ratelimit_nodes=2, redis_url="redis://r:6379/0")
    assert shared.ratelimit_nodes == 2
    # An edge: keys change on its core, and only the push tells it.
    edge = {"core_url": "grpc://core:50051", "core_api_key": "keel_x", "proxy_runtime_api": "haproxy:9999"}
    with pytest.raises(ValidationError, match="on an edge needs KEEL_REDIS_URL"):
        Settings(**edge)  # type: ignore[arg-type]
    assert Settings(**edge, redis_url="redis://r:6379/0").core_url == "grpc://core:50051"  # type: ignore[arg-type]


def test_the_commands_name_only_the_table_and_the_keys() -> None:
    # Deadlines in unix milliseconds: their low 32 bits are written (HAProxy's counters).
    assert commands("keel_refused", {"a" * 16: 5, "b" * 16: 2**32 + 7}) == (
        b"set table keel_refused key aaaaaaaaaaaaaaaa data.gpt0 5;"
        b"set table keel_refused key bbbbbbbbbbbbbbbb data.gpt0 7\n"
    )
    assert clearing("t", ["c" * 16]) == b"clear table t key cccccccccccccccc\n"
    with pytest.raises(ValidationError):
        Settings(proxy_refusal_table="keel;shutdown")
