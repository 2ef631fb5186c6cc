"""The request envelope, as one pure ASGI middleware (no per-request BaseHTTPMiddleware task):
request id, trace span, body size limit, metrics and the access log.

Everything a request does inside runs with `request_id` and `trace_id` in the log context.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.api.http.request_state import request_state
from keel.api.rest.admission import UNROUTED
from keel.api.rest.problems import problem_response
from keel.observability.context import RequestContext, request_context_var, valid_request_id
from keel.observability.metrics import Metrics
from keel.resilience.deadline import deadline_in

_propagator = TraceContextTextMapPropagator()
_log = structlog.get_logger("keel.access")


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
        self._series_cache: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._too_large_detail = f"Request bodies are limited to {max_body_bytes} bytes."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        carrier: dict[str, str] = {}
        request_id = ""
        content_length = -1
        requested_timeout: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"x-request-timeout":
                requested_timeout = value

        keel = scope["app"].state.keel
        parent = _propagator.extract(carrier) if carrier else None
        method = scope["method"]
        span = keel.tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        span_context = span.get_span_context()
        trace_id = format(span_context.trace_id, "032x")
        if not valid_request_id(request_id):
            request_id = trace_id  # one id to quote for the request when the caller sent none
        otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        request_context = RequestContext(request_id, trace_id)
        context_token = request_context_var.set(request_context)
        response_headers = [
            (b"x-request-id", request_id.encode()),
            (
                b"traceparent",
                f"00-{trace_id}-{format(span_context.span_id, '016x')}-"
                f"{'01' if span_context.trace_flags.sampled else '00'}".encode(),
            ),
        ]
        status = 500
        started_response = False
        received = 0

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
            else:
                with deadline_in(timeout):
                    await self.app(scope, counted_receive, send_with_headers)
        except ClientDisconnect:
            # The client went, or the HTTP server gave up on its body (keel.api.http.protocol),
            # before the request was whole: no one to answer and not Keel's failure. 499 as in
            # nginx: "client closed request".
            status = 499
        except Exception as error:
            span.record_exception(error)
            _log.error("unhandled_error", exc_info=error)
            if not started_response:
                await problem_response(
                    500, "internal", "Internal error", "The request failed; it has been logged."
                )(scope, receive, send_with_headers)
            else:
                raise
        finally:
            self._metrics.http_in_flight.dec()
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            counter, histogram = self._series(method, route, status)
            counter.inc()
            histogram.observe(elapsed)
            if span.is_recording():
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            if self._access_log and not request_state().refused:
                # The route template, never the raw path or query: queries may carry email addresses.
                _log.info(
                    "request",
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    key_id=request_context.key_id,  # which key made it: the access log's "who"
                )
            request_context_var.reset(context_token)
            otel_context.detach(otel_token)

    def _series(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        # Label lookups cost a lock and a tuple hash each; the combinations are few (route
        # templates × methods × statuses), so their children are kept.
        key = (method, route, status)
        series = self._series_cache.get(key)
        if series is None:
            labels = (method, route, str(status))
            series = (
                self._metrics.http_requests.labels(*labels),
                self._metrics.http_request_duration.labels(*labels),
            )
            self._series_cache[key] = series
        return series

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
