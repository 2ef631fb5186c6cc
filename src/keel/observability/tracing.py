"""OpenTelemetry tracing: W3C trace context in and out, exporter and sampling from settings."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from keel import __version__


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
