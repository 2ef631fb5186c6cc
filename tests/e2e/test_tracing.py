"""With an exporter configured, each request is a server span with one client span per
database call, continuing the caller's W3C trace."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from keel.config import Settings
from tests.e2e.conftest import make_api


async def test_request_and_database_spans(sqlite_url: str) -> None:
    api, deployment = await make_api(
        Settings(database_url=sqlite_url, trace_exporter="console", trace_sampling_ratio=1.0)
    )
    exported = InMemorySpanExporter()
    deployment.serving.tracer_provider.add_span_processor(SimpleSpanProcessor(exported))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with api.client:
        response = await api.client.get(
            "/v1/profiles/eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J",
            headers={**api.reader, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
    await deployment.close()
    assert response.status_code == 404
    spans = exported.get_finished_spans()
    server = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in server] == ["GET /v1/profiles/{profile_id}"]
    assert format(server[0].context.trace_id, "032x") == trace_id
    assert server[0].attributes is not None
    assert server[0].attributes["http.response.status_code"] == 404
    database = [s for s in spans if s.kind is SpanKind.CLIENT]
    # The key is looked up once (then cached), the profile read is one statement.
    assert [s.name for s in database] == ["db get_api_key", "db get_profile"]
    for span in database:
        assert span.parent is not None
        assert span.parent.span_id == server[0].context.span_id


async def test_a_writes_event_keeps_the_requests_trace_also_without_an_exporter(sqlite_url: str) -> None:
    """The default (`KEEL_TRACE_EXPORTER=none`) records no span, but the caller's trace goes on
    into the change's event (the relay and the dispatcher continue it: docs/events.md#traces)."""
    api, deployment = await make_api(Settings(database_url=sqlite_url))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with api.client:
        response = await api.client.post(
            "/v1/profiles",
            json={"handle": "traced_one", "emails": [{"address": "t@example.com", "primary": True}]},
            headers={**api.writer, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
    try:
        assert response.status_code == 201
        async with deployment.core.local.store.unit_of_work(read_only=True) as uow:
            events = await uow.outbox.read_from(0, 100)
    finally:
        await deployment.close()
    [created] = [r for r in events if r.event.subject == response.json()["id"]]
    assert created.traceparent is not None
    assert created.traceparent.split("-")[1] == trace_id
    # The request's own span, not the caller's: a child of what the caller sent.
    assert created.traceparent.split("-")[2] != "00f067aa0ba902b7"
