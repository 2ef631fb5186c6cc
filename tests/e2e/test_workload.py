"""The write/read workload against a real `keel serve` on SQLite, checked against the database's
final rows; and the rules that turn an HTTP answer into ok / fail / unknown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from testkit.history import History, check
from testkit.ports import free_port
from testkit.workload import classify_error, classify_response, final_state, run_workload

from tests.e2e.test_served_process import _keel

START_TIMEOUT_S = 30.0


@dataclass
class Server:
    env: dict[str, str]
    base_url: str
    token: str
    database_url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "keel", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "keel serve did not become healthy"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: each run's keys are unique, and the checker looks only at
    the rows its own history created."""
    directory = tmp_path_factory.mktemp("workload")
    database_url = f"sqlite:///{directory / 'keel.sqlite3'}"
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_PORT": str(free_port()),
        "KEEL_ACCESS_LOG": "false",
        # The workload measures correctness, not the limits: 4 clients writing flat out would
        # spend most of the run refused.
        "KEEL_RATELIMIT_ENABLED": "false",
    }
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").strip()
    served = Server(env, f"http://127.0.0.1:{env['KEEL_PORT']}", token, database_url, directory / "keel.log")
    served.start()
    try:
        yield served
    finally:
        served.stop()


async def test_no_acknowledged_write_is_lost_or_applied_twice(server: Server, tmp_path: Path) -> None:
    history = History()
    stats = await run_workload(
        server.base_url,
        server.token,
        clients=4,
        duration_s=3.0,
        seed=7,
        request_timeout_s=2.0,
        history=history,
        create_grace_s=3.0,
    )
    report = check(history, await final_state(server.database_url))
    history.save(tmp_path / "history.jsonl")  # left for a look when the test fails
    assert report.ok, report.summary()
    print(stats.summary())
    for f in ("create", "update", "read"):
        assert report.counts[f]["ok"] > 10, stats.summary()
    assert stats.ops == report.counts
    assert stats.latency_ms["read"]["ok"]["p50"] > 0
    assert History.load(tmp_path / "history.jsonl").ops == history.ops


async def test_the_workload_survives_a_killed_server(server: Server) -> None:
    history = History()
    workload = run_workload(
        server.base_url,
        server.token,
        clients=4,
        duration_s=3.0,
        seed=11,
        request_timeout_s=1.0,
        history=history,
        # A create in flight at the kill keeps its Idempotency-Key "in progress" for Keel's
        # 60 s lease; such a create ends `info`, which the checker accepts either way.
        create_grace_s=1.5,
    )

    async def kill_and_restart() -> None:
        await asyncio.sleep(0.8)
        server.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)

    stats, _ = await asyncio.gather(workload, kill_and_restart())
    report = check(history, await final_state(server.database_url))
    print(stats.summary())
    assert report.ok, report.summary()
    # The outage was seen, and survived: a connection refused while the server was down, or an
    # operation whose answer the kill cut off (`info`): which of the two depends on where each
    # client was when the kill came, so either is evidence.
    seen = [op for op in history.ops if op.value.get("error") == "ConnectError" or op.type == "info"]
    assert seen, stats.summary()
    assert report.counts["create"]["ok"] > 0
    assert report.counts["update"]["ok"] > 0


def _response(status: int, problem: str | None = None, **headers: str) -> httpx.Response:
    if problem is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(
        status, json={"type": problem}, headers={"content-type": "application/problem+json", **headers}
    )


@pytest.mark.parametrize(
    ("response", "verdict", "transient"),
    [
        (_response(201), "ok", False),
        (_response(204), "ok", False),
        (_response(404, "urn:keel:problem:not-found"), "fail", False),
        (_response(409, "urn:keel:problem:conflict"), "fail", False),
        (_response(409, "urn:keel:problem:concurrent-modification", **{"retry-after": "1"}), "fail", False),
        (
            _response(409, "urn:keel:problem:idempotency-in-progress", **{"retry-after": "1"}),
            "unknown",
            False,
        ),
        (_response(412, "urn:keel:problem:version-mismatch"), "fail", False),
        (_response(422, "urn:keel:problem:validation"), "fail", False),
        (_response(429, "urn:keel:problem:quota-exceeded", **{"retry-after": "2"}), "fail", True),
        (_response(500), "unknown", False),
        (_response(503, "urn:keel:problem:unavailable"), "unknown", False),
        (_response(502), "unknown", False),
    ],
)
def test_answers_are_classified(response: httpx.Response, verdict: str, transient: bool) -> None:
    classified = classify_response(response)
    assert (classified.verdict, classified.transient) == (verdict, transient)
    assert classified.detail["status"] == response.status_code


def test_retry_after_is_read() -> None:
    assert (
        classify_response(
            _response(429, "urn:keel:problem:quota-exceeded", **{"retry-after": "3"})
        ).retry_after_s
        == 3
    )


@pytest.mark.parametrize(
    ("error", "verdict", "transient"),
    [
        (httpx.ConnectError("refused"), "fail", True),
        (httpx.ConnectTimeout("no answer"), "fail", True),
        (httpx.ReadTimeout("slow"), "unknown", False),
        (httpx.RemoteProtocolError("reset"), "unknown", False),
        (httpx.ReadError("reset"), "unknown", False),
        (TimeoutError(), "unknown", False),
    ],
)
def test_transport_errors_are_classified(error: Exception, verdict: str, transient: bool) -> None:
    classified = classify_error(error)
    assert (classified.verdict, classified.transient) == (verdict, transient)
