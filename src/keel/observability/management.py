"""The management port: /metrics and the probes apart from the API, for scrapers and
orchestrators on a private address.

Production closes /metrics on the API port (it answers without a key, and tells anyone the
traffic, the errors and the dependencies' health); operators who scrape it set
`KEEL_MANAGEMENT_PORT` (bound to `KEEL_MANAGEMENT_HOST`, loopback unless told otherwise). The
same port answers `/healthz` and `/readyz`, as the API port does, so that a kubelet or a load
balancer's health check can use a port the public never reaches.

A small HTTP server in a thread of its own runs it: nothing of the API's stack is in its way, and
a stalled event loop still gets scraped. The probes are the composition root's: each is a
function called in that thread (see keel.bootstrap.lifecycle, which runs them on the event loop
with a bound, so a stalled loop fails them).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

# A probe: (status, JSON body), called in the management server's thread.
Probe = Callable[[], tuple[int, bytes]]

# Connections served at once; more are answered 503 at once. A socket idle this long is closed
# (a slow client cannot hold a thread).
MAX_CONNECTIONS = 8
SOCKET_TIMEOUT_SECONDS = 5.0
_BUSY = b'{"status": "busy"}'


@contextmanager
def management_port(
    registry: CollectorRegistry, host: str, ports: Sequence[int], probes: Mapping[str, Probe] | None = None
) -> Iterator[int]:
    """Serve `registry` at /metrics, and each of `probes` at its path, on `host` and the first of
    `ports` that is free (0: any free port) until the block ends; yields the port. Several
    worker processes of one node each take a port of their own this way."""
    routes = dict(probes or {})
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_SECONDS

        def do_GET(self) -> None:
            if not slots.acquire(blocking=False):
                self._answer(503, _BUSY, "application/json")
                return
            try:
                self._route()
            finally:
                slots.release()

        def _route(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                # The exposition format the scraper asks for (Prometheus text or OpenMetrics).
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._answer(200, encoder(registry), content_type)
            elif path in routes:
                try:
                    status, body = routes[path]()
                except Exception:  # noqa: BLE001 - a probe that fails is a failed probe, not a reset
                    status, body = 503, b'{"status": "failed"}'
                self._answer(status, body, "application/json")
            else:
                self._answer(404, b'{"status": "not found"}', "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes and probes every few seconds: not worth a log line each

    class Server(ThreadingHTTPServer):
        # IPv4 or IPv6, as `host` resolves (http.server's default is IPv4 only).
        address_family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]

    server = _bind_first(Server, host, ports, Handler)
    server.daemon_threads = True
    with served_in_a_thread(server, "management", host) as bound:
        yield bound


@contextmanager
def served_in_a_thread(server: socketserver.BaseServer, name: str, host: str) -> Iterator[int]:
    """Run a bound `server` in a daemon thread of its own until the block ends; yields its port."""
    thread = threading.Thread(target=server.serve_forever, name=f"keel-{name}", daemon=True)
    thread.start()
    address: tuple[str, int] = server.server_address  # type: ignore[assignment]
    bound = int(address[1])
    structlog.get_logger(f"keel.{name}").info(f"{name}_serving", host=host, port=bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _bind_first(
    server_class: type[ThreadingHTTPServer],
    host: str,
    ports: Sequence[int],
    handler: type[BaseHTTPRequestHandler],
) -> ThreadingHTTPServer:
    """A server on the first of `ports` that can be bound; the last port's error if none can."""
    if not ports:
        raise ValueError("no management port to bind")
    for index, port in enumerate(ports):
        try:
            return server_class((host, port), handler)
        except OSError:
            if index == len(ports) - 1:
                raise
    raise AssertionError("unreachable")
