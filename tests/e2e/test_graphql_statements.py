"""No N+1: a GraphQL query for 100 profiles with their emails and links sends a constant number
of SQL statements, counted where they leave for the database (SQLite's trace callback on both
connections; asyncpg's query logger on every connection of the pool), cross-checked with the
database calls the observer records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from keel.bootstrap.container import Services
from keel.domain.api_keys import Principal, Scope
from keel.domain.profile import JSONObject
from keel.storage.guarded import GuardedStore
from tests.e2e.conftest import Api

OPERATOR = Principal("statements-test", frozenset({Scope.ADMIN}), "2026-11-28")
PAGE = """query Page($first: Int!) {
  profiles(first: $first) {
    edges { node { id handle displayName emails { address primary verified } links { kind url } } }
    pageInfo { hasNextPage }
  }
}"""


@asynccontextmanager
async def sent_statements(keel: Services) -> AsyncIterator[list[str]]:
    """The SQL statements the core's store sends while the block runs. Reaches into the store
    adapters on purpose: this test is about what reaches the database driver."""
    guarded = keel.local.store
    assert isinstance(guarded, GuardedStore)
    store: Any = guarded._inner  # the adapter behind the deadline and breaker
    sent: list[str] = []
    if hasattr(store, "_pool"):
        pool = store._pool

        def log(record: Any) -> None:
            sent.append(record.query)

        # Every connection the pool may lend gets the logger (acquired all at once, so each is
        # a different one), and loses it afterwards.
        connections = [await pool.acquire() for _ in range(pool.get_max_size())]
        for connection in connections:
            connection.add_query_logger(log)
        for connection in connections:
            await pool.release(connection)
        try:
            yield sent
        finally:
            connections = [await pool.acquire() for _ in range(pool.get_max_size())]
            for connection in connections:
                connection.remove_query_logger(log)
                await pool.release(connection)
    else:
        for connection in (store._reader, store._writer):
            await connection.set_trace_callback(sent.append)
        try:
            yield sent
        finally:
            for connection in (store._reader, store._writer):
                await connection.set_trace_callback(None)


def observed_calls(keel: Services) -> float:
    total = 0.0
    for metric in keel.metrics.db_query_duration.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_count"))
    return total


async def seed(api: Api, count: int) -> list[str]:
    ids = []
    for n in range(count):
        document: JSONObject = {
            "handle": f"user_{n:03d}",
            "emails": [
                {"address": f"u{n}@example.com", "primary": True},
                {"address": f"u{n}@work.example.com"},
            ],
            "links": [
                {"kind": "site", "url": f"https://u{n}.dev"},
                {"kind": "blog", "url": f"https://u{n}.blog"},
            ],
        }
        ids.append((await api.keel.profiles.create_profile(OPERATOR, document)).profile.id)
    return ids


async def run(api: Api, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = await api.client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=api.reader
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def test_100_profiles_with_emails_and_links_take_one_statement(api: Api) -> None:
    await seed(api, 100)
    await run(api, PAGE, {"first": 1})  # the API key is looked up once, then cached
    counts = {}
    for first in (10, 100):
        calls_before = observed_calls(api.keel)
        async with sent_statements(api.keel) as sent:
            data = await run(api, PAGE, {"first": first})
        edges = data["profiles"]["edges"]
        assert len(edges) == first
        assert all(len(e["node"]["emails"]) == 2 and len(e["node"]["links"]) == 2 for e in edges)
        counts[first] = len(sent)
        assert observed_calls(api.keel) - calls_before == len(sent), sent
    assert counts == {10: 1, 100: 1}


async def test_lookups_by_id_are_batched_into_one_statement(api: Api) -> None:
    ids = await seed(api, 15)
    await run(api, PAGE, {"first": 1})  # the API key is looked up once, then cached
    aliases = " ".join(
        f'p{n}: profile(id: "{profile_id}") {{ handle emails {{ address }} links {{ url }} }}'
        for n, profile_id in enumerate(ids)
    )
    async with sent_statements(api.keel) as sent:
        data = await run(api, "{ " + aliases + " }", {})
    assert [data[f"p{n}"]["handle"] for n in range(15)] == [f"user_{n:03d}" for n in range(15)]
    assert len(sent) == 1, sent
