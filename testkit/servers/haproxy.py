"""A throwaway HAProxy (Debian's package, installed by scripts/ensure-haproxy.sh) in front of Keel
nodes, on free loopback ports, stopped and its directory left to the caller when the block ends.

The configuration is the one docs/fleet.md describes: round robin over the nodes, each checked on
`/readyz` every 500 ms (two failures take a node out, two successes put it back), a request whose
connection to a node fails retried once on another node (only then: a request that reached a
node is never sent twice), and HAProxy's own 502/503/504 answered as problem+json
(deploy/haproxy/errors/). Its admin socket answers `show stat` (`states`) and takes runtime
commands.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from testkit.ports import free_port
from testkit.processes import REPO, start_session, stop

ERRORS = REPO / "deploy" / "haproxy" / "errors"
START_TIMEOUT = 30.0


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (str(p) for p in (Path("/usr/sbin/haproxy"), Path("/usr/bin/haproxy")) if p.exists()), None
    )
    if found is None:
        raise RuntimeError("haproxy is not installed: run scripts/ensure-haproxy.sh (scripts/test.sh does)")
    return found


def haproxy_config(port: int, nodes: Sequence[tuple[str, int]], admin_socket: Path, check_path: str) -> str:
    servers = "\n".join(f"    server {name} 127.0.0.1:{node_port} check" for name, node_port in nodes)
    errorfiles = "\n".join(
        f"    errorfile {status} {ERRORS / f'{status}.http'}" for status in (502, 503, 504)
    )
    return f"""global
    maxconn 4096
    stats socket {admin_socket} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 5s
    timeout http-request 10s
    timeout http-keep-alive 5s
    # A request is sent to another node only when its connection failed: one that reached a
    # node may have taken effect there.
    retries 1
    retry-on conn-failure
    option redispatch
{errorfiles}

frontend keel
    bind 127.0.0.1:{port}
    option forwardfor
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET {check_path}
    http-check expect status 200
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
{servers}
"""


class Haproxy:
    def __init__(
        self, directory: Path, nodes: Sequence[tuple[str, int]], *, check_path: str = "/readyz"
    ) -> None:
        self.directory = directory
        self.nodes = list(nodes)
        self.port = free_port()
        self.admin_socket = directory / "admin.sock"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        self._check_path = check_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> None:
        binary = haproxy_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(haproxy_config(self.port, self.nodes, self.admin_socket, self._check_path))
        checked = subprocess.run(
            [binary, "-c", "-q", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{checked.stdout}{checked.stderr}")
        with self.log.open("ab") as log:
            self._process = start_session([binary, "-db", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._serving():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"haproxy did not start:\n{tail}")
            time.sleep(0.05)

    def _serving(self) -> bool:
        if not self.admin_socket.exists():
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def command(self, line: str) -> str:
        """One runtime-API command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
            admin.settimeout(5)
            admin.connect(str(self.admin_socket))
            admin.sendall(line.encode() + b"\n")
            answer = b""
            while chunk := admin.recv(65536):
                answer += chunk
        return answer.decode()

    def states(self) -> dict[str, str]:
        """Each node's status as HAProxy sees it now: UP, DOWN, "UP 1/2", …"""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "nodes" and row["svname"] != "BACKEND"
        }

    def wait_for(self, expected: dict[str, str], timeout: float = START_TIMEOUT) -> None:
        """Until the nodes named in `expected` have those statuses."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(name) == status for name, status in expected.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy's nodes are {states}, not {expected} after {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process)
            self._process = None


@contextmanager
def haproxy(
    directory: Path, nodes: Sequence[tuple[str, int]], *, check_path: str = "/readyz"
) -> Iterator[Haproxy]:
    """HAProxy in front of `nodes` (name, port on loopback) until the block ends; started once
    it accepts connections (the nodes' states are the caller's to wait for: `wait_for`)."""
    proxy = Haproxy(directory, nodes, check_path=check_path)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
