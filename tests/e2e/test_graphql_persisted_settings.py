"""KEEL_GRAPHQL_PERSISTED_QUERIES as a client sees it, in all four combinations (SQLite and
PostgreSQL, monolith and edge): a small store keeps the most recently used queries and forgets
the least recently used first; 0 turns automatic persisted queries off, which Apollo's link
understands as PERSISTED_QUERY_NOT_SUPPORTED (it then sends the query text every time)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from keel.config import Settings
from tests.e2e.combinations import fresh_api
from tests.e2e.conftest import MODES, Api

QUERIES = {name: f"query {name} {{ viewer {{ keyId }} }}" for name in ("First", "Second", "Third")}


async def persisted_api(database_url: str, mode: str, capacity: int) -> tuple[Api, Any]:
    return await fresh_api(Settings(database_url=database_url, graphql_persisted_queries=capacity), mode)


@pytest.fixture(params=MODES)
async def small_store(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    api, deployment = await persisted_api(database_url, request.param, capacity=2)
    async with api.client:
        yield api
    await deployment.close()


@pytest.fixture(params=MODES)
async def no_store(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    api, deployment = await persisted_api(database_url, request.param, capacity=0)
    async with api.client:
        yield api
    await deployment.close()


def extensions(query: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}}


async def register(api: Api, name: str) -> None:
    query = QUERIES[name]
    response = await api.client.post(
        "/graphql", json={"query": query, "extensions": extensions(query)}, headers=api.reader
    )
    assert response.status_code == 200, response.text
    assert "errors" not in response.json(), response.text


async def by_hash(api: Api, name: str) -> list[str]:
    """The error codes of a request that sends only the hash (none: served from the store)."""
    response = await api.client.post(
        "/graphql", json={"extensions": extensions(QUERIES[name])}, headers=api.reader
    )
    assert response.status_code == 200, response.text
    body = response.json()
    if "errors" not in body:
        assert body["data"]["viewer"]["keyId"]
    return [error["extensions"]["code"] for error in body.get("errors", [])]


async def test_a_small_store_forgets_the_least_recently_used_first(small_store: Api) -> None:
    api = small_store
    await register(api, "First")
    await register(api, "Second")
    assert await by_hash(api, "First") == []  # First is now the most recently used
    await register(api, "Third")  # one too many: Second, the least recently used, goes
    assert await by_hash(api, "Second") == ["PERSISTED_QUERY_NOT_FOUND"]
    assert await by_hash(api, "First") == []
    assert await by_hash(api, "Third") == []
    await register(api, "Second")  # the protocol's way back: send it once more with its hash
    assert await by_hash(api, "Second") == []
    assert await by_hash(api, "Third") == []
    assert await by_hash(api, "First") == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_zero_turns_persisted_queries_off_and_plain_queries_still_work(no_store: Api) -> None:
    api = no_store
    query = QUERIES["First"]
    for payload in ({"extensions": extensions(query)}, {"query": query, "extensions": extensions(query)}):
        response = await api.client.post("/graphql", json=payload, headers=api.reader)
        assert response.status_code == 200, response.text
        errors = response.json()["errors"]
        assert [e["extensions"]["code"] for e in errors] == ["PERSISTED_QUERY_NOT_SUPPORTED"]
        assert errors[0]["message"] == "PersistedQueryNotSupported"
    plain = await api.client.post("/graphql", json={"query": query}, headers=api.reader)
    assert plain.status_code == 200, plain.text
    assert plain.json()["data"]["viewer"]["keyId"]
