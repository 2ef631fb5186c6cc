"""`keel serve --workers N` (keel.bootstrap.workers), served for real: uvicorn's supervisor over
two worker processes on one port, with Redis. A worker killed with SIGKILL is replaced and takes
its management-port slot back while the port keeps answering; on SIGTERM the port refuses new
connections while a request in flight finishes and is kept."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from testkit.health import until, wait_healthy
from testkit.ports import free_port, free_port_run
from testkit.processes import keel_output, start_session, stop

WORKERS = 2
WAIT = 60.0  # an upper bound for what the supervisor does in well under a second


@dataclass(frozen=True)
class Supervised:
    process: subprocess.Popen[bytes]
    base_url: str
    port: int
    token: str
    management: list[int]
    database: Path
    log: Path

    def workers(self) -> list[int]:
        """The supervisor's worker processes (multiprocessing's spawned children; not its
        resource tracker)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return sorted(int(pid) for pid in children if _is_worker(int(pid)))

    def management_ready(self) -> bool:
        try:
            return all(
                httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
                for port in self.management
            )
        except httpx.TransportError:
            return False

    def fleet_processes(self) -> list[float]:
        """Each worker's `keel_fleet_processes`: the live processes it counts on Redis."""
        counts = []
        for port in self.management:
            for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
                if line.startswith("keel_fleet_processes "):
                    counts.append(float(line.split()[1]))
        return counts

    def in_flight(self) -> float:
        """Requests in flight over every worker, from each worker's own /metrics."""
        total = 0.0
        for port in self.management:
            for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
                if line.startswith("keel_http_requests_in_flight "):
                    total += float(line.split()[1])
        return total


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _profile(handle: str) -> dict[str, object]:
    return {"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]}


@contextmanager
def supervised(directory: Path, redis_url: str, grace_seconds: int = 120) -> Iterator[Supervised]:
    port = free_port()
    management = free_port_run(WORKERS)
    database = directory / "keel.sqlite3"
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{database}",
        "KEEL_PORT": str(port),
        "KEEL_REDIS_URL": redis_url,
        "KEEL_MANAGEMENT_PORT": str(management),
        # By default far longer than a test takes to finish its request in flight.
        "KEEL_SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
        "KEEL_HTTP_BODY_TIMEOUT_SECONDS": "120",
    }
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    log = directory / "keel.log"
    with log.open("w") as out:
        process = start_session(
            [sys.executable, "-m", "keel", "serve", "--workers", str(WORKERS)],
            env=env,
            stdout=out,
            stderr=out,
        )
    served = Supervised(
        process,
        f"http://127.0.0.1:{port}",
        port,
        token,
        list(range(management, management + WORKERS)),
        database,
        log,
    )
    try:
        wait_healthy(served.base_url, process, log, name="keel serve --workers", path="/readyz")
        until(served.management_ready, "every worker's management port answers /readyz")
        yield served
    finally:
        stop(process)
        # Workers left behind by a supervisor that died first (its group outlives it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_takes_its_management_slot_back(
    tmp_path: Path, redis_url: str
) -> None:
    with supervised(tmp_path, redis_url) as keel:
        before = keel.workers()
        assert len(before) == WORKERS, before
        os.kill(before[0], signal.SIGKILL)
        until(lambda: len(keel.workers()) == WORKERS and before[0] not in keel.workers(), "a replacement")
        until(keel.management_ready, "the replacement serves the slot its predecessor left")
        # The killed worker never left: it stops being counted once its heartbeat is too old.
        until(lambda: keel.fleet_processes() == [2.0, 2.0], "each worker counts exactly the two live ones")
        assert keel.process.poll() is None
        headers = {"Authorization": f"Bearer {keel.token}"}
        statuses = set()
        for n in range(20):  # a new connection each: whichever worker accepts it answers
            created = httpx.post(
                f"{keel.base_url}/v1/profiles", json=_profile(f"after_kill_{n}"), headers=headers, timeout=30
            )
            statuses.add(created.status_code)
            assert created.status_code == 201, created.text
            read = httpx.get(
                f"{keel.base_url}/v1/profiles/{created.json()['id']}", headers=headers, timeout=30
            )
            statuses.add(read.status_code)
        assert statuses == {200, 201}


def _start_creating(keel: Supervised, client: socket.socket, handle: str) -> bytes:
    """Send a create's headers and the first bytes of its body on `client`, and wait until a
    worker has it in flight; the rest of the body, to send later."""
    body = json.dumps(_profile(handle)).encode()
    request = (
        f"POST /v1/profiles HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keel.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    client.sendall(request + body[:5])
    until(lambda: keel.in_flight() >= 1, "the request is in flight on a worker")
    return body[5:]


def _answer(client: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_sigterm_refuses_new_connections_while_a_request_in_flight_finishes(
    tmp_path: Path, redis_url: str
) -> None:
    with supervised(tmp_path, redis_url) as keel:
        with socket.create_connection(("127.0.0.1", keel.port), timeout=WAIT) as client:
            rest = _start_creating(keel, client, "in_flight_at_sigterm")
            os.kill(keel.process.pid, signal.SIGTERM)  # the supervisor alone, as an orchestrator does

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", keel.port), timeout=5).close()
                except ConnectionRefusedError:
                    return True
                return False

            until(refused, "new connections are refused")
            assert keel.process.poll() is None  # still waiting for the request in flight
            client.sendall(rest)
            answer = _answer(client)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        assert keel.process.wait(WAIT) == 0
        with sqlite3.connect(keel.database) as stored:
            ids = {
                row[0]
                for row in stored.execute("SELECT id FROM profiles UNION SELECT id FROM profile_documents")
            }
        assert len(ids) == 1  # the request finished during the shutdown was kept


def test_a_request_still_running_when_the_grace_ends_does_not_hold_the_shutdown(
    tmp_path: Path, redis_url: str
) -> None:
    with supervised(tmp_path, redis_url, grace_seconds=1) as keel:
        with socket.create_connection(("127.0.0.1", keel.port), timeout=WAIT) as client:
            _start_creating(keel, client, "never_finished")
            os.kill(keel.process.pid, signal.SIGTERM)
            # The rest of the body never comes: the shutdown ends by itself once the grace is
            # over (without a bound it would wait for this request forever), and the request it
            # cut is answered with a problem saying its outcome is unknown, not a bare 500.
            assert keel.process.wait(WAIT) == 0
            head, _, body = _answer(client).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 504 "), head
        assert b"content-type: application/problem+json" in head.lower()
        assert json.loads(body)["type"] == "urn:keel:problem:outcome-unknown"


def test_workers_do_not_outlive_a_supervisor_killed_with_sigkill(tmp_path: Path, redis_url: str) -> None:
    with supervised(tmp_path, redis_url) as keel:
        workers = keel.workers()
        assert len(workers) == WORKERS
        os.kill(keel.process.pid, signal.SIGKILL)
        keel.process.wait(WAIT)

        def gone() -> bool:
            return not any(_is_worker(pid) for pid in workers)

        until(gone, "the orphaned workers have exited")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", keel.port), timeout=5).close()


def test_signals_that_would_change_the_number_of_workers_are_refused(tmp_path: Path, redis_url: str) -> None:
    with supervised(tmp_path, redis_url) as keel:
        before = keel.workers()
        for sig in (signal.SIGHUP, signal.SIGTTIN):
            os.kill(keel.process.pid, sig)
        until(
            lambda: (
                b"signal_refused" in keel.log.read_bytes()
                and keel.log.read_bytes().count(b"signal_refused") == 2
            ),
            "both refusals logged",
        )
        assert keel.workers() == before
        assert keel.process.poll() is None


def test_a_node_whose_replacement_worker_cannot_start_exits_non_zero(tmp_path: Path, redis_url: str) -> None:
    with supervised(tmp_path, redis_url) as keel:
        # The database is gone: a new worker finds no schema and fails its start-up.
        for path in tmp_path.glob("keel.sqlite3*"):
            path.unlink()
        os.kill(keel.workers()[0], signal.SIGKILL)
        assert keel.process.wait(WAIT) == 3
