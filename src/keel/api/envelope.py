"""The request envelope every server puts around a request, whatever its protocol: the trace
span (continuing the caller's trace), the request id (the caller's when worth keeping, else the
trace id), the request context the logs read, the metric series and the access-log line with
the key that made the request.

The HTTP envelope (`keel.api.http.request_envelope`) and the gRPC interceptor (`keel.api.grpc.server`)
only read their protocol's headers or metadata, and name their labels and span attributes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Histogram

from keel.observability.context import RequestContext, request_context_var, valid_request_id

_propagator = TraceContextTextMapPropagator()
_access_log = structlog.get_logger("keel.access")


class Series:
    """A counter and a histogram of requests, with their label children kept: a label lookup
    costs a lock and a tuple hash, and the combinations are few (route or method × status)."""

    def __init__(self, counter: Counter, histogram: Histogram) -> None:
        self._counter = counter
        self._histogram = histogram
        self._children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = (
                self._counter.labels(*labels),
                self._histogram.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)


class Exchange:
    """One request inside the envelope, from `open` to `close`."""

    __slots__ = ("_context_token", "_otel_token", "context", "request_id", "span", "started", "trace_id")

    def __init__(self, tracer: Tracer, name: str, carrier: Mapping[str, str], asked_request_id: str) -> None:
        self.started = time.perf_counter()
        parent = _propagator.extract(carrier) if carrier else None
        self.span: Span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        self.trace_id = format(self.span.get_span_context().trace_id, "032x")
        # One id to quote for the request when the caller sent none (or one not worth keeping).
        self.request_id = asked_request_id if valid_request_id(asked_request_id) else self.trace_id
        self._otel_token = otel_context.attach(trace.set_span_in_context(self.span, parent))
        self.context = RequestContext(self.request_id, self.trace_id)
        self._context_token = request_context_var.set(self.context)

    def traceparent(self) -> str:
        """The W3C `traceparent` of this request's span, for the response."""
        span_context = self.span.get_span_context()
        flags = "01" if span_context.trace_flags.sampled else "00"
        return f"00-{self.trace_id}-{format(span_context.span_id, '016x')}-{flags}"

    def close(
        self,
        series: Series,
        labels: tuple[str, ...],
        *,
        span_name: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        failed: bool = False,
        access_log: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Count the request under `labels`, end its span (renamed, with `attributes`, marked
        as an error when `failed`), write `access_log` (event and fields; duration and key id
        are added) and leave the request's context. Call exactly once, in a `finally`."""
        elapsed = time.perf_counter() - self.started
        try:
            series.observe(labels, elapsed)
            span = self.span
            if span.is_recording():
                if span_name is not None:
                    span.update_name(span_name)
                for key, value in (attributes or {}).items():
                    span.set_attribute(key, value)
                if failed:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            if access_log is not None:
                event, fields = access_log
                _access_log.info(
                    event,
                    **fields,
                    duration_ms=round(elapsed * 1000, 3),
                    key_id=self.context.key_id,  # which key made it: the access log's "who"
                )
        finally:
            request_context_var.reset(self._context_token)
            otel_context.detach(self._otel_token)
