"""Free loopback ports for servers the kit starts.

A port is chosen below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and up
by default), not by binding port 0: port 0 hands out a port from that range, and every outgoing
connection the tests open (to PostgreSQL, Redis, NATS, Keel) takes its local port from the same
range, so a port picked that way can be taken by a client socket before the server binds it. A
fresh-clone run lost a gRPC server's start to exactly that (`Failed to bind to address
127.0.0.1:59067`). Below the range only servers bind, and this process never hands out one port
twice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20_000
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that no client socket will take
    (see the module's docstring). Another server may still take it before the caller binds it:
    starters that can, retry on a new port when the bind fails."""
    top = _ephemeral_start()
    if top - _LOWEST >= 1_000:
        for _ in range(200):
            port = random.randrange(_LOWEST, top)  # noqa: S311 - a port, not a secret
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a machine with no room below
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports below the ephemeral range (a node's worker
    processes take a management port each from one: keel.bootstrap.workers)."""
    top = _ephemeral_start()
    for _ in range(200):
        first = random.randrange(_LOWEST, max(_LOWEST + 1, top - count))  # noqa: S311 - a port
        run = range(first, first + count)
        if not _handed_out.intersection(run) and all(_bindable(port) for port in run):
            _handed_out.update(run)
            return first
    raise RuntimeError(f"no run of {count} free ports below {top}")
