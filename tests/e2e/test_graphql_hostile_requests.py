"""Hostile or malformed GraphQL requests get a 4xx or a GraphQL error with a code, never a 500 or
an INTERNAL_SERVER_ERROR, and are never a way round the rate limits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from keel.config import Settings
from tests.e2e.combinations import fresh_api
from tests.e2e.conftest import MODES, Api, Deployment

# Deterministic budgets: one unit back per minute, so a test's own speed cannot refill them.
TIGHT_PLANS = {
    "standard": {"policies": [{"name": "burst", "quota": 1, "window_seconds": 60, "burst": 100}]},
    "anonymous": {"policies": [{"name": "burst", "quota": 1, "window_seconds": 60, "burst": 10}]},
}
LIST = "query L($n: Int) { profiles(first: $n) { totalCount } }"
BY_HANDLE = "query H($h: String!) { profileByHandle(handle: $h) { id } }"


@pytest.fixture(params=MODES)
async def deployed(
    database_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Api, Deployment]]:
    # All four combinations: SQLite and PostgreSQL (`database_url`), monolith and edge.
    settings = Settings(database_url=database_url, ratelimit_plans=TIGHT_PLANS)
    built, deployment = await fresh_api(settings, request.param)
    async with built.client:
        yield built, deployment
    await deployment.close()


@pytest.fixture
def api(deployed: tuple[Api, Deployment]) -> Api:
    return deployed[0]


def codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


@pytest.mark.parametrize(
    "payload",
    [
        {"query": "{ viewer { keyId } }", "operationName": "\ud800"},
        {"query": '{ profileByHandle(handle: "\ud800") { id } }'},
        {"query": BY_HANDLE, "variables": {"h": "\udfff"}},
    ],
    ids=["operation-name", "query", "variable"],
)
async def test_text_that_is_not_unicode_is_a_bad_request(api: Api, payload: dict[str, Any]) -> None:
    # A lone UTF-16 surrogate, as JSON may escape it ("\ud800"): valid JSON, but no Unicode text.
    raw = json.dumps(payload).encode()
    headers = {**api.reader, "Content-Type": "application/json"}
    response = await api.client.post("/graphql", content=raw, headers=headers)
    assert response.status_code == 400, response.text
    assert codes(response.json()) == ["BAD_REQUEST"]
    # The same surrogate sent as raw bytes: Python's JSON decoder lets it through too.
    encoded = raw.replace(b"\\ud800", b"\xed\xa0\x80").replace(b"\\udfff", b"\xed\xbf\xbf")
    assert encoded != raw
    response = await api.client.post("/graphql", content=encoded, headers=headers)
    assert response.status_code == 400, response.text
    by_get = await api.client.get(
        "/graphql",
        params={"query": LIST, "variables": '{"n": "\\ud800"}'},
        headers=api.reader,
    )
    assert by_get.status_code == 400, by_get.text


async def test_null_for_a_non_null_argument_is_bad_user_input(api: Api) -> None:
    # `$n: Int` may go where `first: Int! = 20` is expected; an explicit null then fails at
    # execution, the client's mistake and not a bug of Keel's.
    response = await api.client.post(
        "/graphql", json={"query": LIST, "variables": {"n": None}}, headers=api.reader
    )
    body = response.json()
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "first" in body["errors"][0]["message"]


async def test_operations_that_call_no_use_case_still_cost_one_unit(api: Api) -> None:
    # Anonymous budget: 10 units. `__typename` calls no use case, and yet each is a request
    # served, charged like REST's cheapest.
    answers = [await api.client.post("/graphql", json={"query": "{ __typename }"}) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.json()["extensions"]["cost"]["actual"] for a in answers} == {1}
    assert [a.json()["extensions"]["cost"]["remaining"] for a in answers] == list(range(9, -1, -1))
    refused = await api.client.post("/graphql", json={"query": "{ __typename }"})
    assert refused.status_code == 429


async def test_introspection_is_charged_like_a_list(api: Api) -> None:
    # A whole schema is priced like a page of profiles (10), and spent: not refunded.
    schema = "{ __schema { types { name fields { name } } } }"
    first = await api.client.post("/graphql", json={"query": schema}, headers=api.reader)
    assert first.json()["extensions"]["cost"] == {"requested": 10, "actual": 10, "remaining": 90}
    aliased = "{ " + " ".join(f"s{n}: __schema {{ types {{ name }} }}" for n in range(15)) + " }"
    anonymous = await api.client.post("/graphql", json={"query": aliased})
    assert codes(anonymous.json()) == ["COST_LIMIT_EXCEEDED"]  # 150 units, above a burst of 10


async def test_operations_dearer_than_the_plan_are_charged_as_refused(api: Api) -> None:
    # 30 units asked for, anonymous burst 10: refused before execution, one unit each.
    dear = "{ a: profiles { totalCount } b: profiles { totalCount } c: profiles { totalCount } }"
    answers = [await api.client.post("/graphql", json={"query": dear}) for _ in range(10)]
    assert {codes(a.json())[0] for a in answers} == {"COST_LIMIT_EXCEEDED"}
    assert "data" not in answers[0].json()
    limited = await api.client.post("/graphql", json={"query": dear})
    assert limited.status_code == 429


async def test_refused_documents_are_charged_too(api: Api) -> None:
    # One unit each, like REST's cheapest request: the anonymous plan's burst of 10 runs out.
    invalid = {"query": "{ nope }"}
    answers = [await api.client.post("/graphql", json=invalid) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    # The cost reported is the one charged.
    assert answers[0].json()["extensions"]["cost"] == {"requested": None, "actual": 1, "remaining": 9}


async def test_only_operations_within_every_limit_are_persisted(api: Api) -> None:
    # Valid and shallow enough, but asking for too many profiles: refused, and not kept.
    query = "{ profiles(first: 500) { totalCount } }"
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}}
    register = await api.client.post(
        "/graphql", json={"query": query, "extensions": extensions}, headers=api.reader
    )
    assert codes(register.json()) == ["VALIDATION"]
    by_hash = await api.client.post("/graphql", json={"extensions": extensions}, headers=api.reader)
    assert codes(by_hash.json()) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_documents_costly_to_validate_are_refused_before_validation(api: Api) -> None:
    # Within the token limit, yet 1.2 s of CPU for graphql-core's overlapping-fields rule.
    repeated = "{ " + " ".join(["viewer { keyId }"] * 480) + " }"
    response = await api.client.post("/graphql", json={"query": repeated}, headers=api.reader)
    assert codes(response.json()) == ["FIELD_LIMIT_EXCEEDED"]
    assert "data" not in response.json()


class _SharedStore:
    """The fleet's persisted queries, as a test controls them: what `get` hands out by hash."""

    def __init__(self, queries: dict[str, str]) -> None:
        self.queries = queries
        self.written: dict[str, str] = {}

    async def get(self, sha256: str) -> str | None:
        return self.queries.get(sha256)

    async def put(self, sha256: str, query: str) -> None:
        self.written[sha256] = query

    async def close(self) -> None:
        return None


async def test_a_shared_persisted_query_is_used_only_if_it_is_the_query_of_its_hash(
    deployed: tuple[Api, Deployment],
) -> None:
    api, deployment = deployed
    serving = deployment.serving  # the process that answers GraphQL: the edge, in edge mode
    asked = "{ viewer { keyId } }"
    sha = hashlib.sha256(asked.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha}}
    serving.persisted_queries = _SharedStore({sha: "{ viewer { scopes } }"})  # not that hash's query
    tampered = await api.client.post("/graphql", json={"extensions": extensions}, headers=api.reader)
    assert codes(tampered.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
    shared = _SharedStore({sha: asked})
    serving.persisted_queries = shared
    found = await api.client.post("/graphql", json={"extensions": extensions}, headers=api.reader)
    assert "keyId" in found.json()["data"]["viewer"]
    other = "{ viewer { apiVersion } }"
    other_sha = hashlib.sha256(other.encode()).hexdigest()
    other_extensions = {"persistedQuery": {"version": 1, "sha256Hash": other_sha}}
    await api.client.post(
        "/graphql", json={"query": other, "extensions": other_extensions}, headers=api.reader
    )
    assert shared.written == {other_sha: other}  # registered with the fleet as well
