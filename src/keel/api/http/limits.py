"""The limits a request head and body must keep, and the answers Keel gives when they do not.

Pure: no sockets, no event loop, no uvicorn. `protocol.py` feeds these from its parser callbacks
and timers; keeping the arithmetic and the response bytes here lets them be unit-tested
without a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus

# The same `type` URIs as the REST problems (keel.api.http.problems.problem_type); spelled out
# here so that the server layer does not import the REST app to refuse a request.
_PROBLEM_TYPE_PREFIX = "urn:keel:problem:"

# What one header line costs beyond its name and value: ": " and CRLF.
_HEADER_LINE_OVERHEAD = 4


@dataclass(frozen=True)
class HttpLimits:
    """How long a client may take to send a request, and how big its head may be."""

    header_timeout_seconds: float
    body_timeout_seconds: float
    max_header_bytes: int
    max_headers: int


@dataclass(frozen=True)
class Refusal:
    """An answer the server gives itself, without the app: the request never reaches Keel."""

    status: int
    code: str
    detail: str

    def response(self) -> bytes:
        """The whole HTTP/1.1 response: a problem+json body, and `Connection: close` because
        the server stops reading the connection after it."""
        phrase = HTTPStatus(self.status).phrase
        body = json.dumps(
            {
                "type": f"{_PROBLEM_TYPE_PREFIX}{self.code}",
                "title": phrase,
                "status": self.status,
                "detail": self.detail,
            },
            separators=(",", ":"),
        ).encode()
        head = (
            f"HTTP/1.1 {self.status} {phrase}\r\n"
            "content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n"
            "\r\n"
        ).encode("ascii")
        return head + body


def head_timeout(limits: HttpLimits) -> Refusal:
    return Refusal(
        408,
        "request-timeout",
        f"The request line and headers must arrive within {limits.header_timeout_seconds:g} seconds.",
    )


def body_timeout(limits: HttpLimits) -> Refusal:
    return Refusal(
        408,
        "request-timeout",
        f"Each part of the request body must arrive within {limits.body_timeout_seconds:g} seconds "
        "of the previous one.",
    )


class HeadBudget:
    """What one request head has used of its limits so far.

    Counted twice over, because the parser (httptools) buffers a header until its line ends:
    `url` and `header` count what the parser hands over, exactly; `raw` counts the bytes that
    arrived while a head was incomplete, so one endless header line is refused after
    `max_header_bytes`, not after the client chose to stop.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self._limits = limits
        self._parsed_bytes = 0
        self._raw_bytes = 0
        self._headers = 0

    def reset(self) -> None:
        """A new request head begins."""
        self._parsed_bytes = 0
        self._raw_bytes = 0
        self._headers = 0

    def url(self, size: int) -> Refusal | None:
        """A fragment of the request target arrived."""
        self._parsed_bytes += size
        if self._parsed_bytes > self._limits.max_header_bytes:
            return Refusal(
                414,
                "uri-too-long",
                f"The request target is limited to {self._limits.max_header_bytes} bytes.",
            )
        return None

    def header(self, name_size: int, value_size: int) -> Refusal | None:
        """One whole header line arrived."""
        self._headers += 1
        self._parsed_bytes += name_size + value_size + _HEADER_LINE_OVERHEAD
        if self._headers > self._limits.max_headers:
            return Refusal(
                431,
                "request-header-fields-too-large",
                f"A request may carry at most {self._limits.max_headers} headers.",
            )
        return self._over_size(self._parsed_bytes)

    def raw(self, size: int) -> Refusal | None:
        """`size` bytes arrived and the head is still not complete."""
        self._raw_bytes += size
        return self._over_size(self._raw_bytes)

    def _over_size(self, used: int) -> Refusal | None:
        if used > self._limits.max_header_bytes:
            return Refusal(
                431,
                "request-header-fields-too-large",
                f"The request line and headers are limited to {self._limits.max_header_bytes} bytes.",
            )
        return None
