"""The management port: /metrics apart from the API, for scrapers on a private address.

Production closes /metrics on the API port (it answers without a key, and tells anyone the
traffic, the errors and the dependencies' health); operators who scrape it set
`KEEL_MANAGEMENT_PORT` (bound to `KEEL_MANAGEMENT_HOST`, loopback unless told otherwise).
prometheus_client's own server runs it, in a thread: nothing of the API's stack is in its way,
and a stalled event loop still gets scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from prometheus_client import CollectorRegistry, start_http_server


@contextmanager
def management_port(registry: CollectorRegistry, host: str, port: int) -> Iterator[int]:
    """Serve `registry` on `host:port` (0: any free port) until the block ends; yields the port."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound: int = server.server_address[1]
    structlog.get_logger("keel.management").info("management_serving", host=host, port=bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
