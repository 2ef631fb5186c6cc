"""GraphQL at /graphql as a client sees it, in process, on SQLite and PostgreSQL: the same use
cases and rules as REST, errors with stable codes, limits and cost before execution, persisted
queries and cacheable GET."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.config import Settings
from tests.e2e.combinations import fresh_api
from tests.e2e.conftest import MODES, Api

PROFILE_FIELDS = "id handle displayName version emails { address primary verified } links { kind url }"
CREATE = f"""
mutation Create($input: CreateProfileInput!) {{
  createProfile(input: $input) {{ replayed profile {{ {PROFILE_FIELDS} attributes createdAt }} }}
}}"""


async def gql(
    api: Api,
    query: str,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    payload: dict[str, Any] = {"query": query, **extra}
    if variables is not None:
        payload["variables"] = variables
    return await api.client.post("/graphql", json=payload, headers=api.writer if headers is None else headers)


def data_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]
    return result


def error_codes(response: httpx.Response) -> list[str]:
    body = response.json()
    assert "Traceback" not in response.text
    return [error["extensions"]["code"] for error in body.get("errors", [])]


def new_profile(handle: str = "ada_l", email: str = "ada@example.com", **extra: Any) -> dict[str, Any]:
    return {"handle": handle, "emails": [{"address": email, "primary": True}], **extra}


async def create(api: Api, **extra: Any) -> dict[str, Any]:
    response = await gql(api, CREATE, {"input": new_profile(**extra)})
    profile: dict[str, Any] = data_of(response)["createProfile"]["profile"]
    return profile


async def test_create_then_read_by_id_handle_and_list_as_rest_does(api: Api) -> None:
    created = await create(api, displayName="Ada", links=[{"kind": "Site", "url": "https://ada.dev"}])
    assert created["handle"] == "ada_l"
    assert created["version"] == 1
    assert created["links"] == [{"kind": "site", "url": "https://ada.dev"}]
    assert created["createdAt"].endswith("Z")
    rest = (await api.client.get(f"/v1/profiles/{created['id']}", headers=api.reader)).json()
    assert rest["display_name"] == created["displayName"] == "Ada"
    query = f"""query Read($id: ID!) {{
      profile(id: $id) {{ {PROFILE_FIELDS} }}
      profileByHandle(handle: "ADA_L") {{ id }}
      profiles(first: 10) {{
        edges {{ cursor node {{ id }} }} pageInfo {{ hasNextPage endCursor }} totalCount
      }}
      viewer {{ scopes isAdmin }}
    }}"""
    data = data_of(await gql(api, query, {"id": created["id"]}, api.reader))
    assert data["profile"] == {k: v for k, v in created.items() if k not in ("attributes", "createdAt")}
    assert data["profileByHandle"] == {"id": created["id"]}
    assert data["profiles"] == {
        "edges": [{"cursor": None, "node": {"id": created["id"]}}],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
        "totalCount": 1,
    }
    assert data["viewer"] == {"scopes": ["profiles:read"], "isAdmin": False}


async def test_handle_available_as_rest_answers_it(api: Api) -> None:
    query = "query Check($handle: String!) { handleAvailable(handle: $handle) }"
    assert data_of(await gql(api, query, {"handle": "ada_l"}, api.reader)) == {"handleAvailable": True}
    await create(api)
    assert data_of(await gql(api, query, {"handle": "ada_l"}, api.reader)) == {"handleAvailable": False}
    invalid = await gql(api, query, {"handle": "Ada-L"}, api.reader)
    assert error_codes(invalid) == ["VALIDATION"]
    assert invalid.json()["errors"][0]["extensions"]["fieldErrors"][0]["field"] == "/handle"
    assert error_codes(await gql(api, query, {"handle": "ada_l"}, {})) == ["UNAUTHENTICATED"]


async def test_pages_follow_the_end_cursor_and_total_count_is_null_when_unknown(api: Api) -> None:
    ids = sorted([(await create(api, handle=f"user_{n}", email=f"u{n}@example.com"))["id"] for n in range(5)])
    query = """query Page($after: String) {
      profiles(first: 2, after: $after) {
        edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage endCursor } totalCount
      }
    }"""
    seen: list[str] = []
    after = None
    for _ in range(3):
        page = data_of(await gql(api, query, {"after": after}, api.reader))["profiles"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert page["totalCount"] is None  # a page of more: the service has no count
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        after = page["pageInfo"]["endCursor"]
        if not page["pageInfo"]["hasNextPage"]:
            assert after is None
            break
        assert page["edges"][-1]["cursor"] == after
    assert seen == ids


async def test_domain_errors_come_back_with_stable_codes_and_no_internals(api: Api) -> None:
    created = await create(api)
    duplicate = await gql(api, CREATE, {"input": new_profile(email="other@example.com")})
    assert error_codes(duplicate) == ["CONFLICT"]
    assert duplicate.json()["errors"][0]["extensions"]["fieldErrors"][0]["field"] == "/handle"
    invalid = await gql(api, CREATE, {"input": new_profile(handle="NO")})
    assert error_codes(invalid) == ["VALIDATION"]
    assert {"field": "/handle"}.items() <= invalid.json()["errors"][0]["extensions"]["fieldErrors"][0].items()
    update = """mutation U($id: ID!, $v: Int) {
      updateProfile(id: $id, patch: {bio: "x"}, expectedVersion: $v) { version bio }
    }"""
    assert error_codes(await gql(api, update, {"id": created["id"], "v": 7})) == ["VERSION_MISMATCH"]
    assert data_of(await gql(api, update, {"id": created["id"], "v": 1}))["updateProfile"] == {
        "version": 2,
        "bio": "x",
    }
    assert error_codes(await gql(api, update, {"id": created["id"], "v": 2}, api.reader)) == ["FORBIDDEN"]
    assert error_codes(await gql(api, "{ viewer { keyId } }", headers={})) == ["UNAUTHENTICATED"]
    bad_key = {"Authorization": "Bearer keel_nope"}
    assert error_codes(await gql(api, "{ viewer { keyId } }", headers=bad_key)) == ["UNAUTHENTICATED"]
    missing = await gql(api, '{ profile(id: "eu1_nope") { id } }', headers=api.reader)
    assert data_of(missing) == {"profile": None}
    delete = "mutation D($id: ID!) { deleteProfile(id: $id) { id } }"
    assert error_codes(await gql(api, 'mutation { deleteProfile(id: "eu1_nope") { id } }')) == ["NOT_FOUND"]
    deleted = await gql(api, delete, {"id": created["id"]})
    assert data_of(deleted) == {"deleteProfile": {"id": created["id"]}}
    gone = await api.client.get(f"/v1/profiles/{created['id']}", headers=api.reader)
    assert gone.status_code == 404


async def test_idempotency_key_replays_create(api: Api) -> None:
    headers = {**api.writer, "Idempotency-Key": "create-ada-1"}
    first = await gql(api, CREATE, {"input": new_profile()}, headers)
    again = await gql(api, CREATE, {"input": new_profile()}, headers)
    assert data_of(first)["createProfile"]["replayed"] is False
    assert data_of(again)["createProfile"]["replayed"] is True
    assert (
        data_of(again)["createProfile"]["profile"]["id"] == data_of(first)["createProfile"]["profile"]["id"]
    )
    other = await gql(api, CREATE, {"input": new_profile(handle="bob_b", email="b@example.com")}, headers)
    assert error_codes(other) == ["IDEMPOTENCY_KEY_REUSED"]
    bad = await gql(api, CREATE, {"input": new_profile()}, {**api.writer, "Idempotency-Key": "k" * 300})
    assert error_codes(bad) == ["VALIDATION"]


ATTRIBUTES = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"plan": {"enum": ["free", "pro"]}, "fraud_score": {"type": "number", "private": True}},
    "additionalProperties": False,
}


@pytest.fixture(params=MODES)
async def private_api(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Api]:
    schema_file = tmp_path / "attributes.schema.json"
    schema_file.write_text(json.dumps(ATTRIBUTES))
    api, deployment = await fresh_api(
        Settings(database_url=database_url, attribute_schema=schema_file), request.param
    )
    async with api.client:
        yield api
    await deployment.close()


async def test_private_attributes_follow_the_rest_rules(private_api: Api) -> None:
    api = private_api
    document = new_profile(attributes={"plan": "pro", "fraud_score": 0.2})
    assert error_codes(await gql(api, CREATE, {"input": document})) == ["FORBIDDEN"]
    created = data_of(await gql(api, CREATE, {"input": document}, api.admin))["createProfile"]["profile"]
    other = data_of(await gql(api, CREATE, {"input": new_profile("bob_b", "b@example.com")}, api.admin))
    ids = [created["id"], other["createProfile"]["profile"]["id"]]
    query = """query P($id: ID!) {
      one: profile(id: $id) { attributes }
      profiles(first: 5) { edges { node { id attributes } } }
    }"""
    batched = "query B($a: ID!, $b: ID!) { a: profile(id: $a) { attributes } b: profile(id: $b) { id } }"
    for headers, visible in ((api.reader, {"plan": "pro"}), (api.admin, {"plan": "pro", "fraud_score": 0.2})):
        data = data_of(await gql(api, query, {"id": ids[0]}, headers))
        assert data["one"]["attributes"] == visible  # one id: the cached single read
        listed = {edge["node"]["id"]: edge["node"]["attributes"] for edge in data["profiles"]["edges"]}
        assert listed[ids[0]] == visible
        both = data_of(await gql(api, batched, {"a": ids[0], "b": ids[1]}, headers))
        assert both["a"]["attributes"] == visible  # two ids: the batched read


async def test_limits_refuse_before_any_resolver_runs(api: Api) -> None:
    deep = "{ profiles { edges { node { emails { address } } } } }"
    assert data_of(await gql(api, deep, headers=api.reader))["profiles"]["edges"] == []
    aliases = "{ " + " ".join(f'a{n}: profile(id: "eu1_{n}") {{ id }}' for n in range(16)) + " }"
    refused = await gql(api, aliases, headers=api.reader)
    assert error_codes(refused) == ["ALIAS_LIMIT_EXCEEDED"]
    assert "data" not in refused.json()  # refused before execution
    too_many = "{ profiles(first: 101) { edges { node { id } } } }"
    response = await gql(api, too_many, headers=api.reader)
    assert error_codes(response) == ["VALIDATION"]
    assert "data" not in response.json()
    zero = await gql(api, "query Q($n: Int!) { profiles(first: $n) { totalCount } }", {"n": 0}, api.reader)
    assert error_codes(zero) == ["VALIDATION"]
    tokens = "{ " + " ".join("viewer { keyId }" for _ in range(800)) + " }"
    assert error_codes(await gql(api, tokens, headers=api.reader)) == ["TOKEN_LIMIT_EXCEEDED"]
    huge = "{ viewer { keyId } }" + " " * 20_000
    assert error_codes(await gql(api, huge, headers=api.reader)) == ["DOCUMENT_TOO_LARGE"]
    assert error_codes(await gql(api, "{ nope }", headers=api.reader)) == ["GRAPHQL_VALIDATION_FAILED"]
    assert error_codes(await gql(api, "{ viewer {", headers=api.reader)) == ["GRAPHQL_PARSE_FAILED"]


async def test_bad_variables_are_bad_user_input_not_internal_errors(api: Api) -> None:
    query = "query Q($id: ID!, $n: Int!) { profile(id: $id) { id } profiles(first: $n) { totalCount } }"
    response = await gql(api, query, {"n": "many"}, api.reader)
    assert response.status_code == 200
    assert set(error_codes(response)) == {"BAD_USER_INPUT"}
    assert len(response.json()["errors"]) == 2


async def test_cost_is_reported_and_charged_to_the_rest_budget(api: Api) -> None:
    created = await create(api)
    query = """query Two($a: ID!) {
      a: profile(id: $a) { id } b: profile(id: "eu1_01JZZZZZZZZZZZZZZZZZZZZZZZ") { id }
      profiles(first: 5) { edges { node { id } } }
    }"""
    response = await gql(api, query, {"a": created["id"]}, api.reader)
    body = response.json()
    cost = body["extensions"]["cost"]
    # Priced like REST: two lookups by id (1 each) and one list (10), before execution; the two
    # lookups ran as one batched call, so one lookup unit was not spent and is given back.
    assert cost["requested"] == 12
    assert cost["actual"] == 11
    assert isinstance(cost["remaining"], int)
    assert response.headers["ratelimit-policy"]
    assert "ratelimit" in response.headers


# The anonymous plan's burst of 20, refilled by one unit a minute: no refill during a test.
SLOW_REFILL = {
    "standard": {"policies": [{"name": "burst", "quota": 1000, "window_seconds": 1, "burst": 1000}]},
    "anonymous": {"policies": [{"name": "burst", "quota": 1, "window_seconds": 60, "burst": 20}]},
}


@pytest.fixture(params=MODES)
async def slow_refill_api(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    settings = Settings(database_url=database_url, ratelimit_plans=SLOW_REFILL)
    api, deployment = await fresh_api(settings, request.param)
    async with api.client:
        yield api
    await deployment.close()


async def test_graphql_and_rest_share_one_rate_limit_budget(slow_refill_api: Api) -> None:
    # 20 units of burst. Each REST list costs 10, and so does this query.
    api = slow_refill_api
    query = "{ profiles(first: 1) { totalCount } }"
    statuses = []
    for _ in range(3):
        statuses.append((await gql(api, query, headers={})).status_code)
    assert statuses[:2] == [200, 200]
    refused = await api.client.get("/v1/profiles")
    assert refused.status_code == 429
    limited = await gql(api, query, headers={})
    assert limited.status_code == 429
    assert error_codes(limited) == ["RATE_LIMITED"]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-policy"]
    assert limited.json()["errors"][0]["extensions"]["violatedPolicies"]


async def test_automatic_persisted_queries_as_apollo_clients_expect(api: Api) -> None:
    await create(api)
    query = "query Handles { profiles(first: 5) { edges { node { handle } } } }"
    sha = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha}}
    unknown = await api.client.post("/graphql", json={"extensions": extensions}, headers=api.reader)
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["message"] == "PersistedQueryNotFound"
    assert error_codes(unknown) == ["PERSISTED_QUERY_NOT_FOUND"]
    registered = await api.client.post(
        "/graphql", json={"query": query, "extensions": extensions}, headers=api.reader
    )
    assert data_of(registered)["profiles"]["edges"] == [{"node": {"handle": "ada_l"}}]
    by_hash = await api.client.post("/graphql", json={"extensions": extensions}, headers=api.reader)
    assert data_of(by_hash) == data_of(registered)
    wrong = await api.client.post(
        "/graphql", json={"query": query + " ", "extensions": extensions}, headers=api.reader
    )
    assert wrong.status_code == 400


async def test_get_persisted_query_is_cacheable_with_etag_and_304(api: Api) -> None:
    created = await create(api)
    query = "query One($id: ID!) { profile(id: $id) { handle version } }"
    sha = hashlib.sha256(query.encode()).hexdigest()
    params = {
        "variables": json.dumps({"id": created["id"]}),
        "extensions": json.dumps({"persistedQuery": {"version": 1, "sha256Hash": sha}}),
    }
    miss = await api.client.get("/graphql", params=params, headers=api.reader)
    assert error_codes(miss) == ["PERSISTED_QUERY_NOT_FOUND"]
    first = await api.client.get("/graphql", params={**params, "query": query}, headers=api.reader)
    assert data_of(first)["profile"] == {"handle": "ada_l", "version": 1}
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, max-age=5"
    again = await api.client.get("/graphql", params=params, headers={**api.reader, "If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    update = 'mutation U($id: ID!) { updateProfile(id: $id, patch: {bio: "new"}) { version } }'
    data_of(await gql(api, update, {"id": created["id"]}))
    changed = await api.client.get("/graphql", params=params, headers={**api.reader, "If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != tag
    mutation = await api.client.get("/graphql", params={"query": update}, headers=api.writer)
    assert mutation.status_code == 405
    post = await gql(api, query, {"id": created["id"]}, api.reader)
    assert post.headers["cache-control"] == "no-store"
    assert "etag" not in post.headers


async def test_introspection_and_graphiql_are_on_by_default(api: Api) -> None:
    introspection = await gql(api, "{ __schema { queryType { name } } }", headers={})
    assert data_of(introspection) == {"__schema": {"queryType": {"name": "Query"}}}
    page = await api.client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
