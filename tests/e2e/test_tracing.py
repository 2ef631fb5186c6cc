"""With an exporter configured, each request is a server span with one client span per
database call, continuing the caller's W3C trace."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
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
    # OpenTelemetry's HTTP server conventions; the path scrubbed to its template (ids and
    # handles are personal data), and no query, client address or user agent.
    assert dict(server[0].attributes or {}) == {
        "http.request.method": "GET",
        "http.route": "/v1/profiles/{profile_id}",
        "http.response.status_code": 404,
        "url.scheme": "http",
        "url.path": "/v1/profiles/{profile_id}",
        "network.protocol.version": "1.1",
        "server.address": "keel.test",
        "server.port": 80,
    }
    database = [s for s in spans if s.kind is SpanKind.CLIENT]
    # The key is looked up once (then cached), the profile read is one statement.
    assert [s.name for s in database] == ["db get_api_key", "db get_profile"]
    for span in database:
        assert span.parent is not None
        assert span.parent.span_id == server[0].context.span_id
        assert dict(span.attributes or {})["db.system.name"] == "sqlite"


async def test_an_edge_request_is_one_trace_through_the_core_to_the_database(sqlite_url: str) -> None:
    """Edge (HTTP server span, gRPC client span) -> core (gRPC server span) -> database (client
    spans): one trace, each hop the child of the one before."""
    api, deployment = await make_api(
        Settings(database_url=sqlite_url, trace_exporter="console", trace_sampling_ratio=1.0), mode="edge"
    )
    assert deployment.serving is not deployment.core
    exported = InMemorySpanExporter()
    for services in (deployment.serving, deployment.core):
        services.tracer_provider.add_span_processor(SimpleSpanProcessor(exported))
    async with api.client:
        created = await api.client.post(
            "/v1/profiles",
            json={"handle": "traced", "emails": [{"address": "traced@example.com", "primary": True}]},
            headers=api.writer,
        )
        assert created.status_code == 201, created.text
        exported.clear()
        response = await api.client.get(f"/v1/profiles/{created.json()['id']}", headers=api.reader)
    await deployment.close()
    assert response.status_code == 200
    spans = exported.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1, [s.name for s in spans]
    by_id = {span.context.span_id: span for span in spans}

    def chain(span: ReadableSpan) -> list[tuple[str, str]]:
        """The span and its ancestors, as (name, kind)."""
        hops = [(span.name, span.kind.name)]
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            hops.append((span.name, span.kind.name))
        return hops

    [read] = [s for s in spans if s.name == "db get_profile"]
    assert chain(read) == [
        ("db get_profile", "CLIENT"),  # the core's database call
        ("keel.profiles.v1.ProfileService/GetProfile", "SERVER"),  # the core's gRPC server span
        ("keel.profiles.v1.ProfileService/GetProfile", "CLIENT"),  # the edge's call to the core
        ("GET /v1/profiles/{profile_id}", "SERVER"),  # the edge's HTTP server span
    ]
    [call] = [s for s in spans if s.kind is SpanKind.CLIENT and s.name.endswith("/GetProfile")]
    assert deployment.grpc is not None
    assert {k: v for k, v in (call.attributes or {}).items() if k.startswith(("rpc.", "server."))} == {
        "rpc.system": "grpc",
        "rpc.service": "keel.profiles.v1.ProfileService",
        "rpc.method": "GetProfile",
        "server.address": "127.0.0.1",
        "server.port": deployment.grpc.port,
    }


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
