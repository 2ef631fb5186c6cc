"""The REST API as a client sees it, end to end in process, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.e2e.conftest import Api

PROBLEM = "application/problem+json"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def body(handle: str = "ada_l", email: str = "ada@example.com", **extra: Any) -> dict[str, Any]:
    return {"handle": handle, "emails": [{"address": email, "primary": True}], **extra}


async def create(api: Api, **extra: Any) -> httpx.Response:
    response = await api.client.post("/v1/profiles", json=body(**extra), headers=api.writer)
    assert response.status_code == 201, response.text
    return response


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:keel:problem:{code}"
    assert problem["status"] == status
    assert problem["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text
    return problem


async def test_create_returns_location_etag_and_the_profile(api: Api) -> None:
    response = await create(
        api, display_name="Ada", locale="en-gb", links=[{"kind": "Site", "url": "https://ada.dev"}]
    )
    profile = response.json()
    assert response.headers["location"] == f"/v1/profiles/{profile['id']}"
    assert response.headers["etag"].startswith('"1.')
    assert response.headers["keel-version"] == "2026-11-28"
    assert profile["handle"] == "ada_l"
    assert profile["locale"] == "en-GB"
    assert profile["links"] == [{"kind": "site", "url": "https://ada.dev"}]
    assert profile["version"] == 1
    fetched = await api.client.get(response.headers["location"], headers=api.reader)
    assert fetched.status_code == 200
    assert fetched.json() == profile


async def test_conditional_get(api: Api) -> None:
    created = await create(api)
    location, tag = created.headers["location"], created.headers["etag"]
    not_modified = await api.client.get(location, headers={**api.reader, "If-None-Match": tag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == tag
    modified = await api.client.get(location, headers={**api.reader, "If-None-Match": '"7.nope"'})
    assert modified.status_code == 200


async def test_merge_patch_with_if_match(api: Api) -> None:
    created = await create(api, bio="old")
    location, tag = created.headers["location"], created.headers["etag"]
    patched = await api.client.patch(
        location,
        json={"bio": None, "display_name": "Ada L."},
        headers={**api.writer, **MERGE_PATCH, "If-Match": tag},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["bio"] is None
    assert patched.json()["display_name"] == "Ada L."
    assert patched.json()["version"] == 2
    assert patched.headers["etag"] != tag
    stale = await api.client.patch(
        location, json={"bio": "x"}, headers={**api.writer, **MERGE_PATCH, "If-Match": tag}
    )
    assert_problem(stale, 412, "version-mismatch")
    either = f"{tag}, {patched.headers['etag']}"  # any listed entity tag may be the current one
    listed = await api.client.patch(
        location, json={"bio": "y"}, headers={**api.writer, **MERGE_PATCH, "If-Match": either}
    )
    assert listed.status_code == 200
    assert listed.json()["version"] == 3


async def test_patch_needs_merge_patch_json(api: Api) -> None:
    location = (await create(api)).headers["location"]
    wrong_type = await api.client.patch(location, json={"bio": "x"}, headers=api.writer)
    assert_problem(wrong_type, 415, "unsupported-media-type")
    broken = await api.client.patch(location, content=b"{not json", headers={**api.writer, **MERGE_PATCH})
    assert_problem(broken, 400, "bad-request")
    invalid = await api.client.patch(
        location, json={"handle": "no way!"}, headers={**api.writer, **MERGE_PATCH}
    )
    problem = assert_problem(invalid, 422, "validation")
    assert problem["errors"] == [{"field": "/handle", "message": "must be 3-30 characters of a-z, 0-9 and _"}]


async def test_delete_is_soft_and_frees_the_handle(api: Api) -> None:
    location = (await create(api)).headers["location"]
    deleted = await api.client.delete(location, headers=api.writer)
    assert deleted.status_code == 204
    assert_problem(await api.client.get(location, headers=api.reader), 404, "not-found")
    assert_problem(await api.client.delete(location, headers=api.writer), 404, "not-found")
    await create(api)


async def test_a_handle_is_free_until_a_live_profile_holds_it(api: Api) -> None:
    async def check(handle: str, who: dict[str, str]) -> httpx.Response:
        return await api.client.get(f"/v1/handles/{handle}", headers=who)

    assert (await check("ada_l", api.reader)).json() == {"handle": "ada_l", "available": True}
    location = (await create(api)).headers["location"]
    taken = await check("ada_l", api.reader)
    assert (taken.status_code, taken.json()) == (200, {"handle": "ada_l", "available": False})
    assert taken.headers["cache-control"] == "private, no-cache"
    assert (await check("ada_l2", api.reader)).json()["available"] is True
    invalid = assert_problem(await check("Ada-L", api.reader), 422, "validation")
    assert invalid["errors"] == [{"field": "/handle", "message": "must be 3-30 characters of a-z, 0-9 and _"}]
    assert_problem(await check("a" * 65, api.reader), 422, "validation")
    assert_problem(await api.client.get("/v1/handles/ada_l"), 401, "unauthenticated")
    await api.client.delete(location, headers=api.writer)
    assert (await check("ada_l", api.reader)).json()["available"] is True  # a deleted profile frees it


async def test_conflicts_are_409_with_the_field(api: Api) -> None:
    await create(api)
    again = await api.client.post("/v1/profiles", json=body(email="other@example.com"), headers=api.writer)
    problem = assert_problem(again, 409, "conflict")
    assert problem["errors"][0]["field"] == "/handle"
    email = await api.client.post(
        "/v1/profiles", json=body(handle="other", email="ADA@example.com"), headers=api.writer
    )
    assert assert_problem(email, 409, "conflict")["errors"][0]["field"] == "/emails"


async def test_validation_errors_list_every_field(api: Api) -> None:
    response = await api.client.post(
        "/v1/profiles",
        json={"handle": "x", "emails": [{"address": "nope", "primary": True}], "timezone": "Nowhere/Land"},
        headers=api.writer,
    )
    problem = assert_problem(response, 422, "validation")
    assert {e["field"] for e in problem["errors"]} == {"/handle", "/emails/0/address", "/timezone"}


async def test_unknown_fields_are_rejected(api: Api) -> None:
    response = await api.client.post("/v1/profiles", json=body(colour="blue"), headers=api.writer)
    problem = assert_problem(response, 422, "validation")
    assert problem["errors"][0]["field"] == "/colour"


async def test_bodies_over_64_kib_are_413(api: Api) -> None:
    response = await api.client.post("/v1/profiles", json=body(bio="x" * 70_000), headers=api.writer)
    assert_problem(response, 413, "payload-too-large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit must hold while streaming too
        for _ in range(70):
            yield b"x" * 1024

    streamed = await api.client.post(
        "/v1/profiles", content=chunks(), headers={**api.writer, "Content-Type": "application/json"}
    )
    assert_problem(streamed, 413, "payload-too-large")


async def test_authentication_and_scopes(api: Api) -> None:
    missing = await api.client.get("/v1/profiles")
    assert_problem(missing, 401, "unauthenticated")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    invalid = await api.client.get("/v1/profiles", headers={"Authorization": "Bearer keel_nope"})
    assert_problem(invalid, 401, "unauthenticated")
    forbidden = await api.client.post("/v1/profiles", json=body(), headers=api.reader)
    assert_problem(forbidden, 403, "forbidden")
    admin = await api.client.post("/v1/profiles", json=body(), headers=api.admin)
    assert admin.status_code == 201


async def test_idempotent_create(api: Api) -> None:
    headers = {**api.writer, "Idempotency-Key": "order-42"}
    first = await api.client.post("/v1/profiles", json=body(), headers=headers)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    replay = await api.client.post("/v1/profiles", json=body(), headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert replay.headers["location"] == first.headers["location"]
    different = await api.client.post("/v1/profiles", json=body(handle="bob"), headers=headers)
    assert_problem(different, 422, "idempotency-key-reused")
    listed = await api.client.get("/v1/profiles", headers=api.reader)
    assert len(listed.json()["items"]) == 1


async def test_concurrent_duplicates_create_one_profile(api: Api) -> None:
    import asyncio

    headers = {**api.writer, "Idempotency-Key": "k-race"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/profiles", json=body(), headers=headers) for _ in range(5))
    )
    statuses = sorted(r.status_code for r in responses)
    fresh = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(fresh) == 1
    # The others arrived while the first was running (409) or after it (replayed 201): which of
    # the two depends on scheduling, so neither is required; one profile, whatever the order.
    assert set(statuses) <= {201, 409}
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "idempotency-in-progress")
            assert response.headers["retry-after"] == "1"
        else:
            assert response.json()["id"] == fresh[0].json()["id"]
    listed = await api.client.get("/v1/profiles", headers=api.reader)
    assert len(listed.json()["items"]) == 1


async def test_list_with_filters_and_pagination(api: Api) -> None:
    ids = []
    for n in range(5):
        ids.append((await create(api, handle=f"user_{n}", email=f"u{n}@example.com")).json()["id"])
    first = await api.client.get("/v1/profiles?limit=2", headers=api.reader)
    assert [p["id"] for p in first.json()["items"]] == sorted(ids)[:2]
    cursor = first.json()["next_cursor"]
    assert cursor
    # The page's link first, then (2026-11-28 being deprecated) the deprecation's, in one field.
    next_link, deprecation = first.headers["link"].split(", ")
    assert next_link == f'</v1/profiles?limit=2&cursor={cursor}>; rel="next"'
    assert deprecation == '</v1/versions>; rel="deprecation"; type="application/json"'
    rest: list[str] = []
    url = f"/v1/profiles?limit=2&cursor={cursor}"
    while url:
        page = await api.client.get(url, headers=api.reader)
        rest.extend(p["id"] for p in page.json()["items"])
        pages = [link for link in page.headers["link"].split(", ") if link.endswith('rel="next"')]
        url = pages[0][1:].split(">")[0] if pages else ""
    assert rest == sorted(ids)[2:]
    by_email = await api.client.get("/v1/profiles", params={"email": "U3@example.com"}, headers=api.reader)
    assert [p["handle"] for p in by_email.json()["items"]] == ["user_3"]
    by_ids = await api.client.get("/v1/profiles", params={"ids": f"{ids[1]},{ids[4]}"}, headers=api.reader)
    assert {p["id"] for p in by_ids.json()["items"]} == {ids[1], ids[4]}


async def test_list_limits(api: Api) -> None:
    too_many = ",".join(f"eu1_{n:026d}" for n in range(101))
    assert_problem(
        await api.client.get("/v1/profiles", params={"ids": too_many}, headers=api.reader), 422, "validation"
    )
    assert_problem(await api.client.get("/v1/profiles?limit=101", headers=api.reader), 422, "validation")
    assert_problem(await api.client.get("/v1/profiles?cursor=zzz", headers=api.reader), 422, "validation")


async def test_versions(api: Api) -> None:
    explicit = await api.client.get("/v1/profiles", headers={**api.reader, "Keel-Version": "2026-11-28"})
    assert explicit.status_code == 200
    assert explicit.headers["keel-version"] == "2026-11-28"
    unknown = await api.client.get("/v1/profiles", headers={**api.reader, "Keel-Version": "1999-01-01"})
    assert_problem(unknown, 400, "unknown-api-version")
    pinned = await api.client.get("/v1/profiles", headers=api.reader)
    assert pinned.headers["keel-version"] == "2026-11-28"


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    assert_problem(await api.client.get("/v1/nothing-here", headers=api.reader), 404, "not-found")
    assert_problem(await api.client.put("/v1/profiles", headers=api.writer), 405, "method-not-allowed")


async def test_request_ids_and_trace_context(api: Api) -> None:
    echoed = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = await api.client.get(
        "/v1/profiles", headers={**api.reader, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    assert traced.headers["traceparent"].split("-")[1] == trace_id
    assert traced.headers["traceparent"].endswith("-01")


async def test_openapi_per_version_and_docs(api: Api) -> None:
    spec = await api.client.get("/openapi.json", params={"version": "2026-11-28"})
    assert spec.status_code == 200
    assert "/v1/profiles/{profile_id}" in spec.json()["paths"]
    assert spec.json()["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    shared = spec.json()["components"]["parameters"]  # `{"$ref": "#/components/parameters/X"}`
    get_parameters = {
        shared[p["$ref"].rsplit("/", 1)[1]]["name"] if "$ref" in p else p["name"]
        for p in spec.json()["paths"]["/v1/profiles/{profile_id}"]["get"]["parameters"]
    }
    assert {"profile_id", "If-None-Match", "Keel-Version"} <= get_parameters
    docs = await api.client.get("/docs", params={"version": "2026-11-28"})
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_explicit_nulls_and_extreme_preconditions_answer_as_usual(api: Api) -> None:
    # Optional fields sent as null are fields left unset, on every path to the service.
    created = await create(api, display_name=None, bio=None, locale=None, timezone=None, avatar_url=None)
    profile_id, tag = created.json()["id"], created.headers["ETag"]
    assert created.json()["display_name"] is None
    # An If-Match naming a version no profile can reach (beyond 64 bits) fails as any mismatch.
    impossible = '"' + "9" * 30 + tag[2:]
    patched = await api.client.patch(
        f"/v1/profiles/{profile_id}",
        content=b'{"bio": "x"}',
        headers={**api.writer, "Content-Type": "application/merge-patch+json", "If-Match": impossible},
    )
    assert_problem(patched, 412, "version-mismatch")
    deleted = await api.client.delete(
        f"/v1/profiles/{profile_id}", headers={**api.writer, "If-Match": impossible}
    )
    assert_problem(deleted, 412, "version-mismatch")


async def test_many_field_errors_come_back_whole(api: Api) -> None:
    # Every error is reported (here 60: each attribute must be a scalar); an edge passes them on.
    response = await api.client.post(
        "/v1/profiles", json=body(attributes={f"k{i}": {"nested": i} for i in range(60)}), headers=api.writer
    )
    problem = assert_problem(response, 422, "validation")
    assert len(problem["errors"]) >= 50
