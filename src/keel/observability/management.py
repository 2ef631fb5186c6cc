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

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# A probe: (status, JSON body), called in the management server's thread.
Probe = Callable[[], tuple[int, bytes]]


@contextmanager
def management_port(
    registry: CollectorRegistry, host: str, port: int, probes: Mapping[str, Probe] | None = None
) -> Iterator[int]:
    """Serve `registry` at /metrics, and each of `probes` at its path, on `host:port` (0: any
    free port) until the block ends; yields the port."""
    routes = dict(probes or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in routes:
                status, body = routes[path]()
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="keel-management", daemon=True)
    thread.start()
    bound: int = server.server_address[1]
    structlog.get_logger("keel.management").info("management_serving", host=host, port=bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
