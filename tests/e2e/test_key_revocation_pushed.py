"""API-key revocation pushed to every node over Redis (keel.cache.redis_key_revocations): two
served Keel processes with a key cached for an hour stop accepting it as soon as `keel keys
revoke` says the servers were told, not when their cache expires. Without Redis the same
revocation waits for the cache (the control: what the push changes). The time it takes is
measured by bench/key_revocation.py."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from testkit.processes import keel_nodes, keel_output

MISSING = "eu1_01M977N90FNC0XW4XT2ZE1XM79"
WAIT = 30.0  # an upper bound, far above what the push takes and far below the key cache's hour


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    settings = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_API_KEY_CACHE_SECONDS": "3600",  # only a push can make a node drop a cached key
        # One process per node: the process that cached the key is the one asked again.
        "KEEL_WORKERS": "1",
    }
    keel_output(settings, "migrate")
    return settings


def _status(base_url: str, token: str) -> int:
    """A read of a profile that does not exist (one rate-limit unit): 404 while the key is
    accepted, 401 once it is not."""
    return httpx.get(
        f"{base_url}/v1/profiles/{MISSING}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).status_code


def test_a_revocation_reaches_every_node_at_once(tmp_path: Path, env: dict[str, str], redis_url: str) -> None:
    env = {**env, "KEEL_REDIS_URL": redis_url}
    token = keel_output(env, "keys", "create", "--quiet").strip()
    with keel_nodes(2, env, tmp_path) as nodes:
        assert [_status(node, token) for node in nodes] == [404, 404]  # the key cached on both
        said = keel_output(env, "keys", "revoke", token.split("_")[1])
        told = re.search(r"running servers were told \((\d+) processes listening\)", said)
        assert told is not None, said
        assert int(told.group(1)) >= 2, said  # both nodes (more on a Redis shared with others)
        deadline = time.monotonic() + WAIT
        for node in nodes:
            while (status := _status(node, token)) == 404:
                assert time.monotonic() < deadline, f"{node} still accepts the revoked key"
                time.sleep(0.02)
            assert status == 401


def test_without_redis_a_node_keeps_a_revoked_key_it_cached(tmp_path: Path, env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "KEEL_REDIS_URL"}
    token = keel_output(env, "keys", "create", "--quiet").strip()
    with keel_nodes(1, env, tmp_path) as nodes:
        assert _status(nodes[0], token) == 404
        said = keel_output(env, "keys", "revoke", token.split("_")[1])
        assert "not pushed" in said, said
        assert _status(nodes[0], token) == 404  # accepted until its key cache expires, in an hour
