"""A throwaway HAProxy (Debian's package, installed by scripts/ensure-haproxy.sh) in front of Keel
nodes, on free loopback ports, stopped and its directory left to the caller when the block ends.

The configuration is the deployment's own, deploy/haproxy/haproxy.cfg (docs/fleet.md explains
it), with what a test must change (`haproxy_config`: addresses, an admin socket, the check's
path when asked): round robin over the nodes, each checked
on `/readyz` every 500 ms (two failures take a node out, two successes put it back), a request
whose connection to a node fails retried once on another node (only then: a request that reached
a node is never sent twice), and HAProxy's own 502/503/504 answered as problem+json
(deploy/haproxy/errors/). Its admin socket answers `show stat` (`states`) and takes runtime
commands; a second socket, at the deployed operator level, is the runtime API a node writes the
keys it refused to (`operator_socket`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
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


DEPLOYED = REPO / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "edges"  # the deployed configuration's backend: the nodes' proxy name in `show stat`
_DEPLOYED_ERRORS = "/usr/local/etc/haproxy/errors"


def haproxy_config(
    port: int,
    nodes: Sequence[tuple[str, int]],
    admin_socket: Path,
    check_path: str,
    agents: Mapping[str, int] | None = None,
    timeouts: Mapping[str, str] | None = None,
) -> str:
    """The deployment's own configuration (deploy/haproxy/haproxy.cfg), with what a test changes
    and nothing else: the frontend on a loopback port, `nodes` (name, loopback port) as the
    servers, the error files where the repository holds them, an admin socket, and no Docker
    DNS (the servers are addresses). `agents`: a node's agent-check port (KEEL_AGENT_PORT), by
    name; a node without one gets no agent check. `timeouts`: a test's own value of some
    `timeout <name>` lines (e.g. a queue wait long enough to see what is queued)."""
    lines: list[str] = []
    section = ""
    for line in DEPLOYED.read_text().splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and not stripped.startswith("#"):
            section = stripped
        if section.startswith("resolvers "):
            continue
        if stripped.startswith("stats socket "):
            continue  # the deployment's runtime API: the test's admin socket below instead
        if stripped.startswith("bind "):
            line = f"    bind 127.0.0.1:{port}"
        elif stripped.startswith("server "):
            continue  # the deployment's servers: replaced by `nodes` below
        elif stripped.startswith("option httpchk "):
            line = f"    option httpchk GET {check_path}"
        elif stripped.startswith("timeout ") and stripped.split()[1] in (timeouts or {}):
            name = stripped.split()[1]
            line = f"    timeout {name} {(timeouts or {})[name]}"
        elif stripped.startswith("default-server "):
            line = re.sub(r" resolvers \S+| init-addr \S+", "", line)
        line = line.replace(_DEPLOYED_ERRORS, str(ERRORS))
        lines.append(line)
        if stripped == "global":
            lines.append(f"    stats socket {admin_socket} mode 600 level admin")
            # The deployment's runtime API for Keel, at its level (`operator_socket`).
            lines.append(f"    stats socket {operator_socket(admin_socket)} mode 600 level operator")
    if section != f"backend {BACKEND}":
        raise RuntimeError(f"{DEPLOYED} must end with `backend {BACKEND}` (its servers are replaced there)")
    for name, node_port in nodes:
        agent = (agents or {}).get(name)
        agent_check = f" agent-check agent-addr 127.0.0.1 agent-port {agent}" if agent is not None else ""
        lines.append(f"    server {name} 127.0.0.1:{node_port} check{agent_check}")
    return "\n".join(lines) + "\n"


def operator_socket(admin_socket: Path) -> Path:
    """The runtime API socket at the deployed level (operator), beside the test's admin one:
    where a node writes the keys it refused (KEEL_PROXY_RUNTIME_API)."""
    return admin_socket.with_name("operator.sock")


class Haproxy:
    def __init__(
        self,
        directory: Path,
        nodes: Sequence[tuple[str, int]],
        *,
        check_path: str = "/readyz",
        agents: Mapping[str, int] | None = None,
        timeouts: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.nodes = list(nodes)
        self.agents = dict(agents or {})
        self.timeouts = dict(timeouts or {})
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
        self.config.write_text(
            haproxy_config(
                self.port, self.nodes, self.admin_socket, self._check_path, self.agents, self.timeouts
            )
        )
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

    def stat(self) -> dict[str, dict[str, str]]:
        """The backend's rows of `show stat` (scur, qcur, qmax, slim, status, …): each node's by
        its name, and the backend's own as `BACKEND` (its queue holds the requests no node
        could take yet)."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND}

    def states(self) -> dict[str, str]:
        """Each node's status as HAProxy sees it now: UP, DOWN, "UP 1/2", …"""
        return {name: row["status"] for name, row in self.stat().items() if name != "BACKEND"}

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
    directory: Path,
    nodes: Sequence[tuple[str, int]],
    *,
    check_path: str = "/readyz",
    agents: Mapping[str, int] | None = None,
    timeouts: Mapping[str, str] | None = None,
) -> Iterator[Haproxy]:
    """HAProxy in front of `nodes` (name, port on loopback) until the block ends; started once
    it accepts connections (the nodes' states are the caller's to wait for: `wait_for`).
    `agents`: each node's agent-check port, by name; `timeouts`: see `haproxy_config`."""
    proxy = Haproxy(directory, nodes, check_path=check_path, agents=agents, timeouts=timeouts)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
