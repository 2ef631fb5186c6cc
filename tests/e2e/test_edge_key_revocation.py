"""A caller's key revoked at the core stops working at an edge in front of it (over real gRPC),
within the key caches' lifetime (the edge's and the core's: KEEL_API_KEY_CACHE_SECONDS each), on
REST and GraphQL (the edge's protocols; gRPC callers talk to the core), SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from keel.config import Settings
from keel.service.auth import parse_key_id, revoke_api_key
from tests.e2e.combinations import fresh_api
from tests.e2e.conftest import Api

CACHE_SECONDS = 0.2
# Bound by count: 200 polls a quarter of the cache's lifetime apart are 25 lifetimes, far past
# the two lifetimes (edge + core) the README promises, and a key cached for the default 60 s
# would outlast them all.
POLLS = 200
VIEWER = {"query": "{ viewer { keyId } }"}


@pytest.fixture
async def edge(database_url: str) -> AsyncIterator[Api]:
    # No rate limits: hundreds of polls from one key must not be refused for another reason.
    settings = Settings(
        database_url=database_url, api_key_cache_seconds=CACHE_SECONDS, ratelimit_enabled=False
    )
    api, deployment = await fresh_api(settings, "edge")
    async with api.client:
        yield api
    await deployment.close()


async def refused(api: Api) -> tuple[httpx.Response, httpx.Response] | None:
    """Both answers once the edge refuses the reader's key on REST and GraphQL; None before."""
    rest = await api.client.get("/v1/profiles", headers=api.reader)
    graphql = await api.client.post("/graphql", json=VIEWER, headers=api.reader)
    assert rest.status_code in (200, 401), rest.text
    assert graphql.status_code == 200, graphql.text
    if rest.status_code == 200 or "errors" not in graphql.json():
        return None
    return rest, graphql


async def test_a_key_revoked_at_the_core_is_refused_by_the_edge_within_the_cache_lifetime(edge: Api) -> None:
    api = edge
    assert api.mode == "edge"
    # Accepted, and so cached by the edge and by the core.
    assert await refused(api) is None
    key_id = parse_key_id(api.reader["Authorization"].removeprefix("Bearer "))
    assert key_id is not None
    assert await revoke_api_key(api.keel.local.store, api.keel.local.clock, key_id)

    answers = None
    for _ in range(POLLS):
        answers = await refused(api)
        if answers is not None:
            break
        await asyncio.sleep(CACHE_SECONDS / 4)
    assert answers is not None, f"the edge still accepts a revoked key after {POLLS} polls"
    rest, graphql = answers
    assert rest.headers["content-type"] == "application/problem+json"
    assert rest.json()["type"] == "urn:keel:problem:unauthenticated"
    assert rest.headers["www-authenticate"] == 'Bearer realm="keel"'
    assert [e["extensions"]["code"] for e in graphql.json()["errors"]] == ["UNAUTHENTICATED"]
    # The other keys are untouched.
    writer = await api.client.get("/v1/profiles", headers=api.writer)
    assert writer.status_code == 200, writer.text
