"""The request envelope of HTTP (`keel.api.envelope`: request id, trace span, metrics, access
log, shared with gRPC), as one pure ASGI middleware (no per-request BaseHTTPMiddleware task),
with what only HTTP has: the body size limit and `X-Request-Timeout`.

Everything a request does inside runs with `request_id` and `trace_id` in the log context.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.api.envelope import Exchange, Series
from keel.api.http.problems import domain_problem, problem_response
from keel.api.http.request_state import request_state
from keel.domain.errors import OutcomeUnknown, ValidationFailed
from keel.observability.metrics import Metrics
from keel.resilience.deadline import deadline_in
from keel.service.consistency import TOKEN_NAME, TOKEN_RULE, Consistency, from_token
from keel.service.consistency import scope as consistency_scope

UNROUTED = "unmatched"  # the route label of requests answered before routing
_CUT_AT_SHUTDOWN = (
    "The server shut down before this request finished: it may or may not have taken effect."
    " Retry it with the same Idempotency-Key (a write), on another node."
)
_log = structlog.get_logger("keel.access")
_CONSISTENCY_TOKEN = TOKEN_NAME.lower().encode()


def _timeout_seconds(value: bytes) -> float | None:
    """A client's `X-Request-Timeout` (seconds, decimal), or None when it is not one."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


class RequestEnvelope:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        access_log: bool,
        request_timeout_seconds: float,
    ) -> None:
        self.app = app
        self._timeout = request_timeout_seconds
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._access_log = access_log
        self._series = Series(metrics.http_requests, metrics.http_request_duration)
        self._too_large_detail = f"Request bodies are limited to {max_body_bytes} bytes."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        request_id = ""
        content_length = -1
        requested_timeout: bytes | None = None
        consistency_token: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"x-request-timeout":
                requested_timeout = value
            elif name == _CONSISTENCY_TOKEN:
                consistency_token = value

        method = scope["method"]
        exchange = Exchange(scope["app"].state.services.tracer, method, carrier, request_id)
        response_headers = [
            (b"x-request-id", exchange.request_id.encode()),
            (b"traceparent", exchange.traceparent().encode()),
        ]
        status = 500
        started_response = False
        received = 0
        # Read-your-writes across replicas (keel.service.consistency): the token read, and the
        # one answered once the request's writes committed.
        bad_consistency = False
        try:
            consistency = from_token(
                consistency_token.decode("latin-1") if consistency_token is not None else None
            )
        except ValidationFailed:
            consistency, bad_consistency = Consistency(), True

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_body:
                    # An HTTPException passes through FastAPI's body parsing (anything else would
                    # become a 400) and reaches the problem handlers as a 413.
                    raise HTTPException(413, self._too_large_detail)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message["headers"] = [*message.get("headers", ()), *response_headers]
                answered = consistency.answer()
                if answered is not None:
                    message["headers"].append((_CONSISTENCY_TOKEN, answered.encode()))
            await send(message)

        # The client may ask for less time than the server's deadline, never for more.
        timeout = self._timeout
        bad_timeout = False
        if requested_timeout is not None:
            asked = _timeout_seconds(requested_timeout)
            bad_timeout = asked is None
            timeout = min(timeout, asked or timeout)
        self._metrics.http_in_flight.inc()
        try:
            if content_length > self._max_body:
                await self._too_large(scope, receive, send_with_headers)
            elif bad_timeout:
                await problem_response(
                    400,
                    "bad-request",
                    "Bad request",
                    "X-Request-Timeout must be a number of seconds greater than 0.",
                )(scope, receive, send_with_headers)
            elif bad_consistency:
                await problem_response(
                    400, "bad-request", "Bad request", f"{TOKEN_NAME} must be {TOKEN_RULE}."
                )(scope, receive, send_with_headers)
            else:
                with deadline_in(timeout), consistency_scope(consistency):
                    await self.app(scope, counted_receive, send_with_headers)
        except ClientDisconnect:
            # The client went, or the HTTP server gave up on its body (keel.api.http.protocol),
            # before the request was whole: no one to answer and not Keel's failure. 499 as in
            # nginx: "client closed request".
            status = 499
        except asyncio.CancelledError:
            # Cancelled: uvicorn cancels a request only when its shutdown grace is over
            # (KEEL_SHUTDOWN_GRACE_SECONDS), and then answers a bare 500 to a client still
            # waiting. Answered here instead, while the connection is there: the request was cut
            # part way, so its outcome is unknown (504, as a write whose commit got no answer).
            # Recorded as the same 499 as a disconnect (a cancelled caller looks the same from
            # here), never a 500 in the metrics, the access log and the span. gRPC says
            # CANCELLED in the same case.
            if not started_response:
                # The connection may be gone as well, or its client not reading: bounded.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await domain_problem(OutcomeUnknown(_CUT_AT_SHUTDOWN), instance=scope["path"])(
                            scope, receive, send_with_headers
                        )
            status = 499
            raise
        except Exception as error:
            exchange.span.record_exception(error)
            _log.error("unhandled_error", exc_info=error)
            if not started_response:
                await problem_response(
                    500, "internal", "Internal error", "The request failed; it has been logged."
                )(scope, receive, send_with_headers)
            else:
                raise
        finally:
            self._metrics.http_in_flight.dec()
            state = request_state()
            route = _route_template(scope)
            if route is UNROUTED and state.unrouted_label is not None:
                route = state.unrouted_label
            logged = self._access_log and not state.refused
            recording = exchange.span.is_recording()  # else no span name nor attributes to build
            exchange.close(
                self._series,
                (method, route, str(status)),
                span_name=f"{method} {route}" if recording else None,
                attributes=_server_span_attributes(scope, method, route, status) if recording else None,
                failed=status >= 500,
                # The route template, never the raw path or query: queries may carry email
                # addresses.
                access_log=("request", {"method": method, "route": route, "status": status})
                if logged
                else None,
            )

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(
            413,
            "payload-too-large",
            "Payload too large",
            f"Request bodies are limited to {self._max_body} bytes.",
        )(scope, receive, send)


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    # Only templates, never raw paths, become labels: raw paths would explode cardinality.
    return path if isinstance(path, str) else UNROUTED


def _server_span_attributes(scope: Scope, method: str, route: str, status: int) -> dict[str, Any]:
    """The HTTP server span's attributes, by OpenTelemetry's semantic conventions. `url.path` is
    scrubbed to the route template: paths carry profile ids and handles, which are personal
    data, and the query (emails) is never recorded. No client address or user agent either."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "http.route": route,
        "http.response.status_code": status,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": route,
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server = scope.get("server")
    if server:
        host, port = server
        attributes["server.address"] = host
        attributes["server.port"] = (
            port if port is not None else 443 if attributes["url.scheme"] == "https" else 80
        )
    return attributes
