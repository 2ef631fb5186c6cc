"""GraphQL under other settings: introspection and GraphiQL off, rate limits and load shedding
switched off, bounded metric labels, and spans (resolver spans only when the request is sampled)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from keel.config import Settings
from keel.resilience.load_shedder import Priority
from tests.e2e.combinations import fresh_api
from tests.e2e.conftest import MODES

# Every test here in all four combinations: SQLite and PostgreSQL (`database_url`), monolith and edge.
pytestmark = pytest.mark.parametrize("mode", MODES)

VIEWER = "query Me { viewer { keyId } }"


async def test_introspection_and_graphiql_off_by_configuration(database_url: str, mode: str) -> None:
    settings = Settings(database_url=database_url, graphql_introspection=False, graphql_graphiql=False)
    api, deployment = await fresh_api(settings, mode)
    async with api.client:
        introspection = await api.client.post(
            "/graphql", json={"query": "{ __schema { types { name } } }"}, headers=api.reader
        )
        typename = await api.client.post("/graphql", json={"query": "{ __typename }"}, headers=api.reader)
        page = await api.client.get("/graphql", headers={"Accept": "text/html"})
    await deployment.close()
    assert introspection.status_code == 200
    assert {e["extensions"]["code"] for e in introspection.json()["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}
    assert "data" not in introspection.json()
    assert typename.json()["data"] == {"__typename": "Query"}
    assert page.status_code == 400  # no GraphiQL: a GET without a query is a bad request


async def test_depth_limit_refuses_before_any_resolver_runs(database_url: str, mode: str) -> None:
    api, deployment = await fresh_api(Settings(database_url=database_url, graphql_max_depth=4), mode)
    registry = deployment.serving.metrics.registry

    def database_calls() -> float:
        return sum(
            sample.value
            for metric in deployment.core.metrics.db_query_duration.collect()
            for sample in metric.samples
            if sample.name.endswith("_count")
        )

    async with api.client:
        shallow = await api.client.post(
            "/graphql", json={"query": "{ profiles { edges { node { id } } } }"}, headers=api.reader
        )
        before = database_calls()
        deep = await api.client.post(
            "/graphql",
            json={"query": "{ profiles { edges { node { emails { address } } } } }"},
            headers=api.reader,
        )
        after = database_calls()
    await deployment.close()
    assert shallow.json()["data"] == {"profiles": {"edges": []}}
    assert deep.status_code == 200
    assert [e["extensions"]["code"] for e in deep.json()["errors"]] == ["DEPTH_LIMIT_EXCEEDED"]
    assert "data" not in deep.json()
    assert after == before  # refused before execution: no database call at all
    assert registry.get_sample_value(
        "keel_graphql_operations_total", {"operation": "unparsed", "type": "unknown", "outcome": "rejected"}
    )


async def test_kill_switches_leave_graphql_working_without_limits(database_url: str, mode: str) -> None:
    settings = Settings(database_url=database_url, ratelimit_enabled=False, load_shedding_enabled=False)
    api, deployment = await fresh_api(settings, mode)
    async with api.client:
        responses = [await api.client.post("/graphql", json={"query": VIEWER}, headers={}) for _ in range(30)]
    await deployment.close()
    assert {r.status_code for r in responses} == {200}
    body = responses[-1].json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # Charged at least one unit, like REST's cheapest request, even with no use case called.
    assert body["extensions"]["cost"] == {"requested": 1, "actual": 1, "remaining": None}
    assert "ratelimit" not in responses[-1].headers


async def test_lists_are_shed_first_under_load(database_url: str, mode: str) -> None:
    settings = Settings(
        database_url=database_url,
        concurrency_limit_initial=10,
        concurrency_limit_min=10,
        concurrency_limit_max=10,
    )
    api, deployment = await fresh_api(settings, mode)
    shedder = deployment.serving.shedder
    assert shedder is not None
    # Eight requests in flight: lists may use 80 % of the limit of 10, so they are shed.
    busy = [shedder.try_admit(Priority.CRITICAL) for _ in range(8)]
    lists = {"query": "{ profiles(first: 5) { totalCount } }"}
    in_fragment = {"query": "{ ...L } fragment L on Query { profiles(first: 5) { totalCount } }"}
    inline = {"query": "{ ... on Query { profiles(first: 5) { totalCount } } }"}
    async with api.client:
        shed = await api.client.post("/graphql", json=lists, headers=api.reader)
        # A list written in a fragment is still a list.
        wrapped = [
            await api.client.post("/graphql", json=q, headers=api.reader) for q in (in_fragment, inline)
        ]
        single = await api.client.post("/graphql", json={"query": VIEWER}, headers=api.reader)
        for admitted_at in busy:
            assert admitted_at is not None
            shedder.release("test", admitted_at, succeeded=False)
        after = await api.client.post("/graphql", json=lists, headers=api.reader)
    await deployment.close()
    assert shed.status_code == 503
    assert [r.status_code for r in wrapped] == [503, 503]
    assert shed.headers["retry-after"] == "1"
    assert [e["extensions"]["code"] for e in shed.json()["errors"]] == ["UNAVAILABLE"]
    assert single.status_code == 200  # a single read is critical, as in REST
    assert after.json()["data"] == {"profiles": {"totalCount": 0}}


async def test_operation_names_in_metrics_are_bounded(database_url: str, mode: str) -> None:
    api, deployment = await fresh_api(
        Settings(database_url=database_url, graphql_metric_operation_names=2), mode
    )
    async with api.client:
        for name in ("First", "Second", "Third", "Fourth"):
            query = f"query {name} {{ viewer {{ keyId }} }}"
            response = await api.client.post("/graphql", json={"query": query}, headers=api.reader)
            assert response.status_code == 200
        await api.client.post("/graphql", json={"query": "{ viewer { keyId } }"}, headers=api.reader)
    registry = deployment.serving.metrics.registry
    await deployment.close()

    def count(operation: str) -> float | None:
        return registry.get_sample_value(
            "keel_graphql_operation_duration_seconds_count", {"operation": operation}
        )

    assert count("First") == count("Second") == 1
    assert count("Third") is None
    assert count("other") == 2
    assert count("anonymous") == 1


async def test_operation_span_and_resolver_spans_only_when_sampled(database_url: str, mode: str) -> None:
    api, deployment = await fresh_api(
        Settings(database_url=database_url, trace_exporter="console", trace_sampling_ratio=1.0), mode
    )
    exported = InMemorySpanExporter()
    # On an edge, the database spans are the core's: both processes' spans are collected.
    for provider in {deployment.serving.tracer_provider, deployment.core.tracer_provider}:
        provider.add_span_processor(SimpleSpanProcessor(exported))
    query = 'query Two { a: profile(id: "eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J") { id } viewer { keyId } }'
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
    async with api.client:
        sampled = await api.client.post(
            "/graphql", json={"query": query}, headers={**api.reader, "traceparent": f"{parent}-01"}
        )
        spans = exported.get_finished_spans()
        exported.clear()
        unsampled = await api.client.post(
            "/graphql", json={"query": query}, headers={**api.reader, "traceparent": f"{parent}-00"}
        )
    await deployment.close()
    assert sampled.status_code == unsampled.status_code == 200
    names = [s.name for s in spans]
    assert "graphql query Two" in names
    assert {"resolve Query.profile", "resolve Query.viewer"} <= set(names)
    operation = next(s for s in spans if s.name == "graphql query Two")
    server = next(s for s in spans if s.kind is SpanKind.SERVER and s.name == "POST /graphql")
    assert operation.parent is not None
    assert operation.parent.span_id == server.context.span_id
    if mode == "edge":  # the core's side of the call, in the same trace
        core = next(s for s in spans if s.name == "keel.profiles.v1.ProfileService/GetProfile")
        assert core.kind is SpanKind.SERVER
        assert core.context.trace_id == server.context.trace_id
    database = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == "db get_profile"]
    assert len(database) == 1
    assert exported.get_finished_spans() == ()  # not sampled: no spans at all
