"""`keel capacity measure` and `keel capacity plan` as an operator runs them, against a served
Keel and one the command starts itself; and the load generator's accounting against a server
that answers what the test tells it to."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from keel.capacity.load import Client, ClosedBeforeAnswer, Target, open_loop
from keel.capacity.steps import Step
from tests.e2e.test_served_process import Served, keel_served

pytestmark = pytest.mark.timeout(300)


def _capacity(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", "capacity", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


SMALL_RAMP = (
    "--start-rps",
    "20",
    "--step-rps",
    "20",
    "--max-rps",
    "40",
    "--step-seconds",
    "1",
    "--profiles",
    "5",
)


def _profile_count(served: Served) -> int:
    listed = httpx.get(
        f"{served.base_url}/v1/profiles",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {served.token}"},
    )
    assert listed.status_code == 200, listed.text
    return len(listed.json()["items"])


def test_a_measurement_of_a_served_keel_and_a_plan_from_it(tmp_path: Path) -> None:
    with keel_served(tmp_path, {}) as served:
        before = _profile_count(served)
        env = {**served.env, "KEEL_CAPACITY_KEY": served.token}
        done = _capacity(
            env, "measure", "--url", served.base_url, "--kinds", "read,write", *SMALL_RAMP,
            "--p99-slo-ms", "10000", "--report", str(tmp_path / "cap"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # The profiles it made are gone again.
        assert _profile_count(served) == before
    assert served.token not in done.stdout + done.stderr
    measured = json.loads((tmp_path / "cap.json").read_text())
    assert [(s["kind"], s["scale"]) for s in measured["series"]] == [("read", 1), ("write", 1)]
    for series in measured["series"]:
        assert [step["offered_rps"] for step in series["steps"]] == [20, 40]
        for step in series["steps"]:
            assert step["sent"] > 0
            assert step["ok"] == step["sent"], step  # a served Keel answers such a light load in full
            assert step["failures"] == {}
            assert 0 < step["p50_ms"] <= step["p99_ms"]
            assert step["server_cpu_us"] is None  # a URL: its processes are not known here
    assert (tmp_path / "cap-read-latency.svg").exists()
    assert "knee" in (tmp_path / "cap.md").read_text()
    planned = _capacity(
        served.env, "plan", str(tmp_path / "cap.json"), "--peak-rps", "1000", "--read-share", "0.8",
        "--p99-slo-ms", "10000",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    assert "Plan: " in planned.stdout
    assert "Need: 1,000/s × (1 + 0.3) = 1,300/s." in planned.stdout


def test_a_keel_it_starts_itself_has_its_cpu_and_redis_commands_counted(
    tmp_path: Path, redis_url: str
) -> None:
    # The database migrated and a key made; the keel it starts keeps its rate limits on Redis.
    with keel_served(tmp_path, {}) as served:
        env = {**served.env, "KEEL_CAPACITY_KEY": served.token, "KEEL_REDIS_URL": redis_url}
        env.pop("KEEL_PORT")
        done = _capacity(
            env, "measure", "--start-workers", "1", "--kinds", "mix", *SMALL_RAMP, "--p99-slo-ms", "10000",
            "--redis-url-env", "KEEL_REDIS_URL", "--report", str(tmp_path / "own"),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    measured = json.loads((tmp_path / "own.json").read_text())
    assert measured["targets"] == {"1": "keel serve --workers 1"}
    steps = measured["series"][0]["steps"]
    assert steps
    for step in steps:
        assert step["server_cpu_us"] is not None
        assert step["server_cpu_us"] > 0
        # Every admitted request takes at least its rate-limit decision on Redis.
        assert step["redis_commands"] >= step["sent"]
        assert sum(step["redis_by_command"].values()) == step["redis_commands"]
    assert "Redis commands a request at the knee, by command: `" in (tmp_path / "own.md").read_text()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("measure", "--url", "http://127.0.0.1:1"), "KEEL_CAPACITY_KEY holds no API key"),
        (("measure",), "give --url or --start-workers"),
        (("measure", "--url", "x=http://127.0.0.1:1"), "N=URL with N >= 1"),
        (("measure", "--url", "http://127.0.0.1:1", "--kinds", "reads"), "--kinds: one or more of"),
        (("plan", "/nonexistent.json", "--peak-rps", "10"), "/nonexistent.json"),
        (("measure", "--start-workers", "1,a"), "comma-separated whole numbers"),
        (("measure", "--url", "http://127.0.0.1:1", "--step-seconds", "inf"), "must be finite"),
        (
            ("measure", "--url", "http://127.0.0.1:1", "--read-share", "nan"),
            "Invalid value for '--read-share'",
        ),
        (("measure", "--url", "1=http://127.0.0.1:1", "--url", "1=http://127.0.0.1:2"), "N=1 given twice"),
        (("measure", "--url", "1=http://127.0.0.1:1", "--url", "2=ftp://x"), "not an http(s) URL"),
    ],
)
def test_what_cannot_be_measured_or_planned_is_said_plainly(args: tuple[str, ...], said: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KEEL_CAPACITY_KEY"}
    if args[0] == "measure" and len(args) > 3:
        env["KEEL_CAPACITY_KEY"] = "keel_x"
    done = _capacity(env, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr


async def _one_step(port: int, *, client_timeout: float, rate: float, seconds: float, seed: int) -> Step:
    """One open-loop step of GETs over one connection to the test's server on `port`."""
    client = Client(Target.parse(f"http://127.0.0.1:{port}", "t"), connections=1, timeout=client_timeout)
    try:
        return await open_loop(client, rate, seconds, lambda rng: ("GET", "/", b"", ""), seed=seed)
    finally:
        await client.close()


@asynccontextmanager
async def _scripted(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Client]:
    """A client of one connection (5 s timeout) to a server on loopback that runs `handle`."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = Client(
        Target.parse(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "t"), connections=1, timeout=5
    )
    try:
        yield client
    finally:
        await client.close()
        server.close()


async def _answering(statuses: list[tuple[int, bool]]) -> tuple[asyncio.Server, int]:
    """A server that answers each request with the next (status, close the connection?)."""
    pending = list(statuses)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while pending:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            status, close = pending.pop(0)
            body = b'{"ok": true}'
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n".encode()
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\n"
                + body
            )
            await writer.drain()
            if close:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_the_load_generator_counts_each_answer_by_status() -> None:
    # Ten answers: six 200s (one closing its connection), three 503s, one 429; a request past
    # them finds the connection closed (a socket failure).
    statuses = [(200, False)] * 5 + [(200, True)] + [(503, False)] * 3 + [(429, False)]
    server, port = await _answering(statuses)
    try:
        step = await _one_step(port, client_timeout=5, rate=2000.0, seconds=0.2, seed=3)
    finally:
        server.close()
    assert step.sent > len(statuses)
    assert step.ok == 6
    assert step.failures["503"] == 3
    assert step.failures["429"] == 1
    assert step.failures.get("socket", 0) == step.sent - 10
    assert step.failed == step.sent - 6


async def test_a_connection_the_server_closed_while_idle_is_not_counted_against_it() -> None:
    # Every connection answers one request, without `Connection: close`, and is then closed: as a
    # server closes a keep-alive connection at its idle timeout, racing the client's next request.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async with _scripted(handle) as client:
        answers = [await client.send(("GET", "/", b"", "")) for _ in range(5)]
    assert [answer.status for answer in answers] == [200] * 5


async def _slow(first_delay: float, then_delay: float) -> tuple[asyncio.Server, int, list[int]]:
    """A server answering 200 after `first_delay` to its first request, `then_delay` to the rest;
    and the count of requests it read."""
    read = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            read[0] += 1
            await asyncio.sleep(first_delay if read[0] == 1 else then_delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], read


async def test_latency_counts_from_when_a_request_was_due_not_from_when_it_was_sent() -> None:
    # One connection; the first answer takes 0.5 s. Every request due in the 0.3 s step waits
    # behind it: measured from when each was sent, most would take ~0 s.
    server, port, _ = await _slow(0.5, 0.0)
    try:
        step = await _one_step(port, client_timeout=5, rate=100.0, seconds=0.3, seed=5)
    finally:
        server.close()
    assert step.failed == 0
    assert step.ok == step.sent
    assert step.sent > 5
    # Due at most 0.3 s after the start, answered at least 0.5 s after it.
    assert step.p50_ms >= 200
    assert step.waited_for_connection == step.sent - 1
    assert step.seconds >= 0.5  # the throughput is over the time to the last answer


async def test_a_request_still_waiting_at_its_deadline_is_a_timeout() -> None:
    # One connection, each answer 0.4 s, a 0.6 s timeout from when each request was due (all in
    # the first 0.05 s): the first is answered in time; the second would be at 0.8 s, past its
    # deadline; the rest wait for the connection until theirs. Each is a timeout, however long it
    # waited in the client's queue.
    server, port, _ = await _slow(0.4, 0.4)
    try:
        step = await _one_step(port, client_timeout=0.6, rate=200.0, seconds=0.05, seed=7)
    finally:
        server.close()
    assert step.sent > 3
    assert step.ok == 1
    assert step.failures == {"timeout": step.sent - 1}
    assert step.p99_all_ms is None
    assert not step.within(10_000)
    assert step.waited_for_connection == step.sent - 1


async def test_an_answer_cut_after_its_headers_is_a_failure_and_is_not_sent_again() -> None:
    served = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served[0] += 1
        if served[0] == 1:  # the first: whole, keeping the connection open
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            served[0] += 1
        # Headers promising 10 bytes, then the end of the connection.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await writer.drain()
        writer.close()

    async with _scripted(handle) as client:
        first = await client.send(("PATCH", "/", b"{}", "application/merge-patch+json"))
        with pytest.raises(asyncio.IncompleteReadError):
            await client.send(("PATCH", "/", b"{}", "application/merge-patch+json"))
    assert first.status == 200
    assert served[0] == 2  # the cut PATCH was not written a second time


async def test_a_write_on_a_connection_closed_before_its_answer_is_not_sent_again() -> None:
    # As the idle-close race, but for a PATCH: the server may have read it, so it is a failure,
    # where a GET is sent once more (test_a_connection_the_server_closed_while_idle_...).
    served = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served[0] += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        served[0] += 1
        writer.close()  # read, and closed without a byte of answer

    async with _scripted(handle) as client:
        await client.send(("GET", "/", b"", ""))
        with pytest.raises(ClosedBeforeAnswer):
            await client.send(("PATCH", "/", b"{}", "application/merge-patch+json"))
    assert served[0] == 2


async def test_a_request_past_its_deadline_is_not_written() -> None:
    server, port, read = await _slow(0.0, 0.0)
    client = Client(Target.parse(f"http://127.0.0.1:{port}", "t"), connections=1, timeout=5)
    try:
        await client.send(("GET", "/", b"", ""))  # a free slot and an idle connection
        with pytest.raises(TimeoutError):
            await client.send(("PATCH", "/", b"{}", "application/merge-patch+json"), budget_seconds=-1.0)
        await client.send(("GET", "/", b"", ""))
    finally:
        await client.close()
        server.close()
    assert read[0] == 2  # the two GETs only
