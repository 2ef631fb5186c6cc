"""The HTTP protocol `keel serve` hands uvicorn, built from the settings."""

from __future__ import annotations

from keel.api.http.limits import HttpLimits
from keel.api.http.protocol import LimitedHttpToolsProtocol, limited_protocol
from keel.config import Settings


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        header_timeout_seconds=settings.http_header_timeout_seconds,
        body_timeout_seconds=settings.http_body_timeout_seconds,
        max_header_bytes=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
    )


def http_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """uvicorn's `http=`: httptools with Keel's limits."""
    return limited_protocol(http_limits(settings))
