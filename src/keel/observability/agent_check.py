"""HAProxy's agent check, answered by Keel: the process's adaptive concurrency limit, so that the
proxy in front holds the requests past it in its own queue instead of sending them to a process
that would only refuse them (docs/fleet.md#haproxy-fed-by-keel).

HAProxy connects to the agent port every `agent-inter` and reads one line
(https://docs.haproxy.org/2.6/configuration.html#agent-check): here `maxconn:<n>`, which sets
the server's connection limit to what the process takes without shedding its critical requests
(lists and searches may use less): the adaptive limit less the shedder's hysteresis band
(`LoadShedder.steady_concurrency`), rounded (an overshoot of less than one is accepted). Held at the
limit itself, a node whose limit dipped between two checks would start shedding and, kept
inside the band by the proxy, never stop (measured: bench/proxy_queue.py). No state word:
`ready` would undo an operator's drain or maintenance, and readiness stays with the HTTP check
on `/readyz`.

A small TCP server in a thread of its own answers it, as the management port does: a stalled
event loop still gets its limit reported.
"""

from __future__ import annotations

import socket
import socketserver
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from keel.observability.management import served_in_a_thread

SOCKET_TIMEOUT_SECONDS = 2.0


def agent_line(limit: float) -> bytes:
    """What the agent answers for a concurrency `limit`: never 0, which HAProxy reads as none."""
    return f"maxconn:{max(1, round(limit))}\n".encode()


@contextmanager
def agent_check_port(host: str, port: int, limit: Callable[[], float]) -> Iterator[int]:
    """Answer HAProxy's agent check on `host`:`port` (0: any free port) with `limit()` until the
    block ends; yields the port."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(SOCKET_TIMEOUT_SECONDS)
            self.request.sendall(agent_line(limit()))

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        # IPv4 or IPv6, as `host` resolves.
        address_family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]

    with served_in_a_thread(Server((host, port), Handler), "agent_check", host) as bound:
        yield bound
