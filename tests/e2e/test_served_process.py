"""`keel migrate`, `keel keys create` and `keel serve` as an operator runs them: a real process,
real HTTP, and what it writes to its logs and metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from testkit.health import wait_healthy
from testkit.ports import free_port as _free_port

REPO = Path(__file__).resolve().parents[2]


# Bounds a hang only (a line that never comes, a server that never answers): never what a test
# measures.
HANG_SECONDS = 30.0


@dataclass
class Served:
    base_url: str
    token: str
    log_path: Path
    env: dict[str, str]

    def log_offset(self) -> int:
        """Where the log ends now: pass it to `log_lines` to read only what comes after."""
        return self.log_path.stat().st_size

    def log_text(self, since: int = 0) -> str:
        """The complete lines written after `since` (a line being written is left out)."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            text = log.read().decode()
        return text[: text.rfind("\n") + 1]

    def log_lines(self, since: int = 0) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_text(since).splitlines() if line.strip()]

    def wait_for_log(
        self, wanted: Callable[[list[dict[str, object]]], bool], what: str, since: int = 0
    ) -> list[dict[str, object]]:
        """The lines written after `since`, once `wanted` holds for them: the server writes a
        request's line as it finishes it, which may come after the client has its answer."""
        give_up = time.monotonic() + HANG_SECONDS
        while not wanted(lines := self.log_lines(since)):
            assert time.monotonic() < give_up, f"never logged: {what}"
            time.sleep(0.02)
        return lines


def _keel(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "keel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def keel_served(
    directory: Path, settings: dict[str, str], scopes: str = "profiles:read,profiles:write"
) -> Iterator[Served]:
    """A migrated SQLite database in `directory`, a key with `scopes`, and `keel serve` on a free
    port with `settings` (KEEL_* variables) until the block ends, on failure too."""
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{directory / 'keel.sqlite3'}",
        "KEEL_PORT": str(_free_port()),
        **settings,
    }
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", scopes, "--quiet").strip()
    log_path = directory / "keel.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "keel", "serve"], env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{env['KEEL_PORT']}"
    try:
        wait_healthy(base_url, process, log_path)
        yield Served(base_url, token, log_path, env)
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = {"KEEL_TRACE_SAMPLING_RATIO": "1.0", "KEEL_API_KEY_CACHE_SECONDS": "0.5"}
    with keel_served(tmp_path_factory.mktemp("served"), settings) as served:
        yield served


def test_the_printed_key_works_and_logs_carry_ids_but_no_secrets(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.token}", "X-Request-ID": "req-e2e-1"}
    since = served.log_offset()
    created = httpx.post(
        f"{served.base_url}/v1/profiles",
        json={"handle": "grace_h", "emails": [{"address": "grace@example.com", "primary": True}]},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    listed = httpx.get(
        f"{served.base_url}/v1/profiles", params={"email": "grace@example.com"}, headers=headers
    )
    assert listed.json()["items"][0]["handle"] == "grace_h"

    def ours(lines: list[dict[str, object]]) -> list[dict[str, object]]:
        return [line for line in lines if line.get("request_id") == "req-e2e-1"]

    lines = served.wait_for_log(lambda lines: len(ours(lines)) >= 2, "both requests", since)
    text = served.log_text(since)
    assert served.token not in text
    assert served.token.split("_", 2)[2] not in text
    assert "grace@example.com" not in text
    access = ours(lines)
    assert len(access) == 2
    for line in access:
        assert line["event"] == "request"
        assert len(str(line["trace_id"])) == 32
        assert line["route"] in ("/v1/profiles",)


def test_health_and_readiness(served: Served) -> None:
    assert httpx.get(f"{served.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "migrations": "current"}


def test_metrics_pass_promtool_and_label_by_route_template(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    httpx.get(f"{served.base_url}/v1/profiles/eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J", headers=headers)
    exposition = httpx.get(f"{served.base_url}/metrics").text
    assert 'route="/v1/profiles/{profile_id}"' in exposition
    assert "eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J" not in exposition
    for name in (
        "keel_http_requests_total",
        "keel_http_request_duration_seconds_bucket",
        "keel_http_requests_in_flight",
        "keel_db_query_duration_seconds_bucket",
        "keel_db_pool_connections",
        "keel_build_info",
        "keel_ratelimit_decisions_total",
        "keel_ratelimit_decision_duration_seconds_bucket",
        "keel_adaptive_concurrency_limit",
    ):
        assert name in exposition
    promtool = shutil.which("promtool") or str(REPO / ".tools" / "bin" / "promtool")
    assert Path(promtool).exists(), "promtool is missing: run scripts/ensure-promtool.sh"
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_refuses_an_unmigrated_database(tmp_path: Path, served: Served) -> None:
    env = {
        **served.env,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        "KEEL_PORT": str(_free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "keel", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Run `keel migrate` first" in result.stdout + result.stderr


def test_seed_creates_demo_profiles_through_the_service(served: Served) -> None:
    output = _keel(served.env, "seed", "--count", "25")
    assert "created 25 profiles" in output
    headers = {"Authorization": f"Bearer {served.token}"}
    page = httpx.get(f"{served.base_url}/v1/profiles", params={"limit": 100}, headers=headers).json()
    demo = [p for p in page["items"] if p["handle"].startswith("demo_")]
    assert len(demo) == 25
    assert all(p["emails"][0]["primary"] for p in demo)


def test_a_revoked_key_stops_working(served: Served) -> None:
    token = _keel(
        served.env, "keys", "create", "--scopes", "profiles:read", "--name", "short-lived", "--quiet"
    )
    token = token.strip()
    key_id = token.split("_")[1]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{served.base_url}/v1/profiles", headers=headers).status_code == 200
    listing = _keel(served.env, "keys", "list")
    assert key_id in listing
    assert token.split("_", 2)[2] not in listing
    assert "revoked" in _keel(served.env, "keys", "revoke", key_id)
    # The server knows the key for its key cache's lifetime (KEEL_API_KEY_CACHE_SECONDS, 0.5 s
    # here), then looks it up again and finds it revoked: wait for that 401, not for a moment.
    give_up = time.monotonic() + HANG_SECONDS
    while (status := httpx.get(f"{served.base_url}/v1/profiles", headers=headers).status_code) == 200:
        assert time.monotonic() < give_up, "the revoked key kept working"
        time.sleep(0.02)
    assert status == 401
    assert "revoked" in _keel(served.env, "keys", "list")


def test_keys_carry_a_rate_limit_plan(served: Served) -> None:
    token = _keel(
        served.env, "keys", "create", "--plan", "partner", "--name", "big-partner", "--quiet"
    ).strip()
    response = httpx.get(f"{served.base_url}/v1/profiles", headers={"Authorization": f"Bearer {token}"})
    assert response.headers["ratelimit-policy"].startswith('"burst";q=1000;w=2;qu="keel-cost"')
    assert "partner" in next(
        line for line in _keel(served.env, "keys", "list").splitlines() if "big-partner" in line
    )
    refused = subprocess.run(
        [sys.executable, "-m", "keel", "keys", "create", "--plan", "platinum"],
        env=served.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "unknown plan" in refused.stderr


def test_a_bad_plan_configuration_is_one_clear_line(served: Served) -> None:
    tiny = {"policies": [{"name": "burst", "quota": 1, "window_seconds": 1, "burst": 1}]}
    plans = json.dumps({"standard": tiny, "anonymous": tiny})
    refused = subprocess.run(
        [sys.executable, "-m", "keel", "keys", "create"],
        env={**served.env, "KEEL_RATELIMIT_PLANS": plans},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("keel: bad configuration:")
    assert "can never admit" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_fleet_wide_kill_switch_lives_in_redis(served: Served, redis_url: str) -> None:
    import redis

    env = {**served.env, "KEEL_REDIS_URL": redis_url}
    client = redis.Redis.from_url(redis_url)
    try:
        assert "rate limits off" in _keel(env, "ratelimit", "off")
        assert client.get("keel:rl:switch") == b"off"
        assert "rate limits on" in _keel(env, "ratelimit", "on")
        assert client.get("keel:rl:switch") is None
    finally:
        client.close()
    without_redis = subprocess.run(
        [sys.executable, "-m", "keel", "ratelimit", "off"],
        env=served.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert without_redis.returncode == 1
    assert "KEEL_REDIS_URL is not set" in without_redis.stderr


def test_refusals_are_logged_sampled_not_one_line_each(served: Served) -> None:
    # No key: the anonymous plan (burst 20 units); a list costs 10.
    since = served.log_offset()
    statuses = [httpx.get(f"{served.base_url}/v1/profiles").status_code for _ in range(8)]
    assert statuses[:2] == [401, 401]
    refusals = statuses[2:].count(429)
    assert refusals >= 5
    # A request never limited, after the refusals: once its line is there, so are theirs (one
    # process writes every line to one stream, in order).
    marker = {"X-Request-ID": "req-e2e-after-refusals"}
    assert httpx.get(f"{served.base_url}/healthz", headers=marker).status_code == 200
    lines = served.wait_for_log(
        lambda lines: any(line.get("request_id") == marker["X-Request-ID"] for line in lines),
        "the request after the refusals",
        since,
    )
    assert not [line for line in lines if line.get("event") == "request" and line.get("status") == 429]
    sampled = [line for line in lines if line.get("event") == "rate_limited"]
    # At most one line a second: fewer lines than refusals unless every refusal took a second.
    assert 1 <= len(sampled) < refusals
    assert sampled[0]["policies"] == ["burst"]


def test_x_forwarded_for_from_a_loopback_peer_is_not_trusted_by_default(served: Served) -> None:
    # KEEL_TRUSTED_PROXY_HOPS is 0: whatever a caller writes in X-Forwarded-For, it is limited by
    # its own address. (uvicorn's own proxy handling, off in `keel serve`, would trust loopback
    # peers and give each spoofed address a fresh bucket.)
    statuses = [
        httpx.get(f"{served.base_url}/v1/profiles", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
        for n in range(3)
    ]
    assert 429 in statuses, statuses
