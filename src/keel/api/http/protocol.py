"""uvicorn's httptools protocol, with the limits it lacks: how long a client may take to send
a request head or the next piece of a body, and how big a head may be.

Why a subclass of uvicorn's protocol, which reaches into its internals: uvicorn (0.54) has no
header-read timeout, no header size or count limit with httptools, and only an idle keep-alive
timer that any byte resets, so a client sending one header line every few seconds, or nothing
at all, holds a connection forever. The alternatives were weighed: an ASGI middleware never sees
a request whose head is incomplete, so it cannot bound it; granian has some of these limits
natively, but switching servers changes the event loop, logging, signals and every benchmark
figure for a gain this ~150-line class also gives. `uvicorn.run(http=...)` accepts a protocol
class, so Keel keeps uvicorn, uvloop and httptools and adds the limits where the bytes are
parsed. What this relies on is pinned (uvicorn and httptools in the lock files) and checked by
tests/unit/test_http_protocol_contract.py, which fails on an upgrade that moves it.

The limits (settings `KEEL_HTTP_*`):
- the request line and headers must be complete within `header_timeout_seconds` of the
  connection opening, or, on a keep-alive connection, of the first byte after the previous
  response (the idle wait before it is uvicorn's keep-alive timeout, `KEEL_HTTP_KEEP_ALIVE_SECONDS`).
  Any later byte does not reset it (that is the slow-loris hole). A new connection that sent
  nothing is closed silently (like an idle keep-alive close); one that sent part of a head
  gets 408;
- the head may hold at most `max_headers` header lines (431) and `max_header_bytes` bytes
  (431; 414 when the request target alone is over);
- while the server reads a body, each piece must arrive within `body_timeout_seconds` of the
  previous one; else 408 if no response has started, and the connection is closed. Time the
  server itself stops reading (uvicorn's flow control, while the app is busy) does not count.

Refusals are written here, not by the app: a request refused this way never reaches Keel's
middleware, so it is neither logged as a request nor counted in the HTTP metrics. After a
refusal the server shuts its sending side and drains what the client still sends for a short
while before closing, so that the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from keel.api.http.limits import HeadBudget, HttpLimits, Refusal, body_timeout, head_timeout

# How long a refused connection keeps draining the client's bytes before it is closed anyway.
LINGER_SECONDS = 2.0


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing. httptools wraps it in an
    HttpParserCallbackError, which uvicorn answers through `send_400_response`."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with head and body limits; use `limited_protocol(limits)`."""

    limits: ClassVar[HttpLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._budget = HeadBudget(self.limits)
        # True from the end of one request message (or the connection's start) until the next
        # head is complete: the bytes that arrive belong to a head.
        self._reading_head = True
        # Some bytes of that head have arrived (a timeout then deserves a 408, not silence).
        self._head_started = False
        self._heads_complete = 0  # heads parsed on this connection
        self._refusal: Refusal | None = None
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._linger_timer: TimerHandle | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: drained until the linger ends, never parsed
        if self._reading_head and self._head_timer is None:
            # The first byte after an idle keep-alive wait (uvicorn's keep-alive timer, which this
            # byte cancels, bounded the wait): the head's clock starts now, and no later byte
            # restarts it.
            self._arm_head_timer()
        head_before, heads_before = self._reading_head, self._heads_complete
        super().data_received(data)
        if (
            head_before
            and self._heads_complete == heads_before
            and self._refusal is None
            and not self.transport.is_closing()
        ):
            # A head was incomplete before this chunk and still is: every byte of the chunk
            # belongs to it, part of it perhaps in a header line the parser buffers whole.
            self._refuse_if(self._budget.raw(len(data)))

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for any parser error, including the one a callback's _HeadRefused
        # becomes: answer the refusal instead of a plain 400.
        if self._refusal is not None:
            self._send_refusal(self._refusal)
        else:
            super().send_400_response(msg)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_started = True
        self._budget.reset()

    def on_url(self, url: bytes) -> None:
        self._raise_if(self._budget.url(len(url)))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raise_if(self._budget.header(len(name), len(value)))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._heads_complete += 1
        self._reading_head = False
        self._head_started = False
        self._cancel_head_timer()
        super().on_headers_complete()
        # Cancelled at once by on_message_complete when there is no body.
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm_body_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_body_timer()
        self._reading_head = True

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        self._cancel_body_timer()
        if pipelined or self.transport.is_closing():
            return  # the next request's head is already in, or the connection is done
        # Idle now: uvicorn's keep-alive timer (`KEEL_HTTP_KEEP_ALIVE_SECONDS`) closes the
        # connection if nothing comes; the head timer starts with the next request's first byte
        # (or is already running, if some of it came before this response ended).

    # Limits

    def _raise_if(self, refusal: Refusal | None) -> None:
        if refusal is not None:
            self._refusal = refusal
            raise _HeadRefused(refusal.detail)

    def _refuse_if(self, refusal: Refusal | None) -> None:
        if refusal is not None:
            self._refusal = refusal
            self._send_refusal(refusal)

    def _send_refusal(self, refusal: Refusal) -> None:
        self._refusal = refusal
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app (if running) now reads http.disconnect and its writes are dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                # Too late for a status of our own: the client sees a truncated response.
                self.transport.close()
                return
        self.transport.write(refusal.response())
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with unread bytes in the socket would send a reset, which can destroy the
        # answer before the client reads it: shut the sending side, drain, then close.
        self.flow.resume_reading()
        self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._send_refusal(head_timeout(self.limits))
        else:
            self.transport.close()  # nothing of a request: an idle connection, closed quietly

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_seconds, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The server stopped reading (the app has not taken the body yet): not the client's
            # delay. Wait again.
            self._arm_body_timer()
            return
        self._send_refusal(body_timeout(self.limits))


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to pass as `uvicorn.run(http=...)`: uvicorn builds one per connection
    with fixed keyword arguments, so the limits ride on the class."""

    class Limited(LimitedHttpToolsProtocol):
        pass

    Limited.limits = limits
    return Limited
