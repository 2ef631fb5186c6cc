"""`/healthz` polled from a process of its own, so that what it measures is Keel's answer and
not the runner's own delays: the runner's event loop also drives the traffic, the history
workload and a `/metrics` poller that parses the whole exposition every 100 ms, and a poll
sharing that loop waits for all of it before it sees its answer.

    python -m chaos.healthz_poller --port PORT --out FILE [--interval 0.05] [--timeout 2]

One line per poll is appended to FILE: `started seconds ok` (monotonic seconds, which on Linux
every process on the machine shares; ok is 1 for a 200 and 0 for an error status, a transport
error or a timeout). It polls until its stdin closes, so it ends with the runner that started it
even if the runner is killed. Standard library only, so it starts in a few tens of
milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen, TimeoutExpired


@dataclass(frozen=True, slots=True)
class Poll:
    started: float  # monotonic seconds
    seconds: float
    ok: bool


def _poll_once(connection: http.client.HTTPConnection) -> bool:
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status == 200


def poll_until(
    stop: threading.Event, host: str, port: int, interval: float, timeout: float, out: Path
) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    with out.open("a", buffering=1) as lines:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = _poll_once(connection)
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()  # a fresh connection next time (http.client reconnects)
            seconds = time.monotonic() - started
            lines.write(f"{started:.6f} {seconds:.6f} {int(ok)}\n")
            stop.wait(interval)


def read_polls(path: Path) -> list[Poll]:
    polls = []
    for line in path.read_text().splitlines():
        started, seconds, ok = line.split()
        polls.append(Poll(float(started), float(seconds), ok == "1"))
    return polls


@contextmanager
def polling(
    port: int, out: Path, *, interval: float = 0.05, timeout: float = 2.0, started: list[int] | None = None
) -> Iterator[Callable[[], list[Poll]]]:
    """A poller process for the `with` block; yields a function that stops it and returns its
    polls. `started` receives its pid (so a caller can check it did not outlive the block)."""
    from testkit.processes import REPO, start_session

    command = [sys.executable, "-m", "chaos.healthz_poller", "--port", str(port), "--out", str(out)]
    command += ["--interval", str(interval), "--timeout", str(timeout)]
    process: Popen[bytes] = start_session(command, stdin=PIPE, stdout=DEVNULL, cwd=REPO)
    if started is not None:
        started.append(process.pid)

    def stop() -> list[Poll]:
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        process.wait(timeout + 5)
        return read_polls(out) if out.exists() else []

    try:
        yield stop
    finally:
        if process.poll() is None:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
            try:
                process.wait(timeout + 5)
            except TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=2.0, help="a poll slower than this fails")
    arguments = parser.parse_args()
    stop = threading.Event()

    def wait_for_stdin_to_close() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=wait_for_stdin_to_close, daemon=True).start()
    poll_until(stop, arguments.host, arguments.port, arguments.interval, arguments.timeout, arguments.out)


if __name__ == "__main__":
    main()
