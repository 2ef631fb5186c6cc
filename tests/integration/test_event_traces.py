"""An event's publish and its webhook deliveries join the trace of the change that wrote it, on
SQLite and PostgreSQL, a real NATS JetStream and a real HTTP receiver: the outbox keeps the
change's W3C `traceparent`, the relay's publish span and the dispatcher's delivery span are its
children, and each sends its own span on (the NATS message's `traceparent` header, the webhook
request's). An event written outside any trace starts one of its own."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from testkit.servers.nats import NatsServer

from keel.domain.events import PROFILE_CREATED
from keel.service.outbox import OutboxRelay, RelayPolicy
from keel.service.ports import Store
from tests.fakes import FakeClock
from tests.integration.test_event_outbox import PREFIX, WRITER, document, drain, nats_bus, publisher
from tests.integration.test_webhooks import ADMIN, admin, dispatch_once, dispatcher, profiles
from tests.integration.webhook_receivers import receiver

__all__ = ["nats_bus"]  # the fixture, used by name


def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def ids(traceparent: str) -> tuple[int, int]:
    """(trace id, span id) of a W3C traceparent."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


async def stream_traceparents(server: NatsServer, expected: int) -> list[str]:
    client = await nats.connect(server.url)
    try:
        subscription = await client.jetstream().pull_subscribe(
            f"{PREFIX}.>", durable="trace-reader", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        )
        messages = await subscription.fetch(expected, timeout=5.0)
        return [(message.headers or {}).get("traceparent", "") for message in messages]
    finally:
        await client.close()


async def test_a_changes_publish_is_a_span_of_its_trace_and_sends_it_on(
    store: Store, nats_bus: NatsServer
) -> None:
    provider, exporter = traced()
    tracer = provider.get_tracer("test")
    clock = FakeClock()
    relay = OutboxRelay(store, publisher(nats_bus), clock, RelayPolicy(), tracer=tracer)
    try:
        with tracer.start_as_current_span("the request") as request:
            await profiles(store, clock).create_profile(WRITER, document(1))
        await profiles(store, clock).create_profile(WRITER, document(2))  # outside any trace
        await drain(relay, store)
        headers = await stream_traceparents(nats_bus, 2)
    finally:
        await relay.publisher.close()
    first, second = named(exporter, "keel.events publish")
    assert first.parent is not None
    assert first.parent.span_id == request.get_span_context().span_id
    assert first.context.trace_id == request.get_span_context().trace_id
    assert ids(headers[0]) == (first.context.trace_id, first.context.span_id)
    assert second.parent is None  # a trace of its own
    assert second.context.trace_id != request.get_span_context().trace_id
    assert ids(headers[1]) == (second.context.trace_id, second.context.span_id)


@pytest.mark.parametrize("status", [200, 500])
async def test_each_delivery_attempt_is_a_span_of_the_changes_trace_and_sends_it_on(
    store: Store, status: int
) -> None:
    provider, exporter = traced()
    tracer = provider.get_tracer("test")
    clock = FakeClock()
    async with receiver(status) as endpoint:
        await admin(store, clock).register(ADMIN, endpoint.url, [PROFILE_CREATED], False)
        with tracer.start_as_current_span("the request") as request:
            await profiles(store, clock).create_profile(WRITER, document(1))
        worker = dispatcher(store, clock)
        worker.tracer = tracer
        await dispatch_once(worker)
        [sent] = await endpoint.wait_for(1)
    [attempt] = named(exporter, "keel.webhooks deliver")
    assert attempt.parent is not None
    assert attempt.parent.span_id == request.get_span_context().span_id
    assert attempt.context.trace_id == request.get_span_context().trace_id
    assert attempt.attributes is not None
    assert attempt.attributes["http.response.status_code"] == status
    assert ids(sent.headers["traceparent"]) == (attempt.context.trace_id, attempt.context.span_id)
