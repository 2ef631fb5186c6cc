"""OpenTelemetry tracing: W3C trace context in and out, exporter and sampling from settings."""

from __future__ import annotations

import random
from collections.abc import Iterator

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    get_current_span,
    set_span_in_context,
    use_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from keel import __version__
from keel.observability.opentelemetry_internals import Links, agnostic_context_manager


def build_tracer_provider(
    *, exporter: str, sampling_ratio: float, otlp_endpoint: str | None, service_name: str
) -> TracerProvider:
    """A provider that samples `sampling_ratio` of new traces and follows the caller's choice
    for traces that arrive with a parent (so one request is traced whole or not at all)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(sampling_ratio)),
    )
    span_exporter = _exporter(exporter, otlp_endpoint)
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def _exporter(kind: str, otlp_endpoint: str | None) -> SpanExporter | None:
    if kind == "none":
        return None
    if kind == "otlp":
        # Imported here so that a deployment without OTLP export never loads its HTTP stack.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ValueError(f"unknown trace exporter {kind!r}")


def tracer_from(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("keel", __version__)


class PropagatingTracer(Tracer):
    """The tracer for `KEEL_TRACE_EXPORTER=none`: trace context without recording.

    With no exporter, a recorded span goes nowhere, yet the SDK still pays for sampling, span
    objects and attributes on every request. This tracer keeps what stays useful without a
    backend: a caller's trace id is continued (and returned in `traceparent`), a request
    without one gets a fresh id, and both reach the logs, so lines still correlate across
    services. Spans it returns are non-recording, so instrumentation skips its detail work.
    """

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Links = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = get_current_span(context).get_span_context()
        span_id = random.getrandbits(64) or 1
        if parent.is_valid:
            return NonRecordingSpan(
                SpanContext(
                    parent.trace_id,
                    span_id,
                    is_remote=False,
                    trace_flags=parent.trace_flags,
                    trace_state=parent.trace_state,
                )
            )
        trace_id = random.getrandbits(128) or 1
        return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(0)))

    @agnostic_context_manager  # the decorator the API's own Tracer uses for this method
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Links = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context)
        with use_span(span, end_on_exit=end_on_exit) as current:
            yield current


_propagator = TraceContextTextMapPropagator()


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span (None outside any span): what a change records
    beside its event, so that the event's publish and deliveries join the change's trace."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def traceparent_of(span: Span) -> str | None:
    """The W3C `traceparent` naming `span`, to send on with a message or a request it made."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=set_span_in_context(span))
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context:
    """The context a recorded `traceparent` names, for a span that continues its trace; without
    one, an empty context: the span starts a trace of its own (whatever span is current)."""
    if traceparent is None:
        return Context()
    return _propagator.extract({"traceparent": traceparent})
