"""Two REST versions served side by side: what 2026-12-07 changed, seen on every route it
touched in both versions; an older version's answers say it is deprecated (and, once the operator
set one, its sunset); `GET /v1/versions` lists what each version changed. The frozen exchanges
(`tests/contract/`) hold every other route of both versions to what they answered."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from typer.testing import CliRunner

from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.rest.api_versions import versions
from keel.cli import app
from keel.config import Settings
from tests.e2e.conftest import Api, GrpcClient, make_api
from tests.e2e.test_strict_json import invalid_argument_fields
from tests.integration.conftest import truncate

OLD, NEW = "2026-11-28", "2026-12-07"
DEPRECATION_LINK = '</v1/versions>; rel="deprecation"; type="application/json"'
SUNSET_LINK = '</v1/versions>; rel="sunset"; type="application/json"'
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


async def _emptied(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        await truncate(database_url)


def _in(version: str, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Keel-Version": version}


def _profile(handle: str) -> dict[str, Any]:
    return {
        "handle": handle,
        "emails": [
            {"address": f"{handle}@old.example.com"},
            {"address": f"{handle}@example.com", "primary": True},
        ],
    }


async def test_profiles_carry_their_primary_email_from_2026_12_07_only(api: Api) -> None:
    created = {}
    for version in (OLD, NEW):
        answer = await api.client.post(
            "/v1/profiles", json=_profile(f"ada_{version[-2:]}"), headers=_in(version, api.writer)
        )
        assert answer.status_code == 201, answer.text
        created[version] = answer.json()
    assert created[NEW]["primary_email"] == "ada_07@example.com"
    assert "primary_email" not in created[OLD]
    profile_id = created[OLD]["id"]
    for version in (OLD, NEW):
        headers = _in(version, api.writer)
        read = (await api.client.get(f"/v1/profiles/{profile_id}", headers=headers)).json()
        patched = await api.client.patch(
            f"/v1/profiles/{profile_id}", json={"bio": version}, headers={**headers, **MERGE_PATCH}
        )
        listed = (await api.client.get("/v1/profiles", params={"ids": profile_id}, headers=headers)).json()
        for document in (read, patched.json(), *listed["items"]):
            assert document["id"] == profile_id
            if version == NEW:
                assert document["primary_email"] == "ada_28@example.com"
            else:
                assert "primary_email" not in document
    # Apart from the new field, the two versions answer with the same profile.
    old = (await api.client.get(f"/v1/profiles/{profile_id}", headers=_in(OLD, api.reader))).json()
    new = (await api.client.get(f"/v1/profiles/{profile_id}", headers=_in(NEW, api.reader))).json()
    assert {k: v for k, v in new.items() if k != "primary_email"} == old


async def _create(api: Api, count: int) -> None:
    for number in range(count):
        answer = await api.client.post(
            "/v1/profiles", json=_profile(f"user_{number:02d}"), headers=api.writer
        )
        assert answer.status_code == 201, answer.text


async def test_a_page_holds_twenty_before_2026_12_07_and_fifty_since(api: Api) -> None:
    await _create(api, 25)
    old = await api.client.get("/v1/profiles", headers=_in(OLD, api.reader))
    new = await api.client.get("/v1/profiles", headers=_in(NEW, api.reader))
    assert len(old.json()["items"]) == 20
    assert len(new.json()["items"]) == 25
    assert new.json()["links"] == {"next": None}
    # The older version's next page names the query as the client sent it: no `limit` it never
    # sent (the default is applied to the request, not written into its links).
    cursor = old.json()["next_cursor"]
    assert old.headers["link"].startswith(f'</v1/profiles?cursor={cursor}>; rel="next"')
    rest = await api.client.get("/v1/profiles", params={"cursor": cursor}, headers=_in(OLD, api.reader))
    assert len(rest.json()["items"]) == 5
    assert rest.json()["next_cursor"] is None
    # A limit the client sends is kept in both.
    for version in (OLD, NEW):
        page = await api.client.get("/v1/profiles", params={"limit": 7}, headers=_in(version, api.reader))
        assert len(page.json()["items"]) == 7


async def test_since_2026_12_07_a_list_carries_the_link_to_follow_to_its_next_page(api: Api) -> None:
    await _create(api, 5)
    seen: list[str] = []
    first = await api.client.get("/v1/profiles", params={"limit": 2}, headers=_in(NEW, api.reader))
    assert "next_cursor" not in first.json()
    path: str | None = first.json()["links"]["next"]
    assert first.headers["link"] == f'<{path}>; rel="next"'
    seen.extend(p["handle"] for p in first.json()["items"])
    while path is not None:
        assert "limit=2" in path
        page = await api.client.get(path, headers=_in(NEW, api.reader))
        assert page.status_code == 200, page.text
        seen.extend(p["handle"] for p in page.json()["items"])
        path = page.json()["links"]["next"]
    assert sorted(seen) == [f"user_{n:02d}" for n in range(5)]
    assert len(seen) == 5


async def test_an_older_versions_answers_say_it_is_deprecated_and_the_newest_ones_do_not(api: Api) -> None:
    old = await api.client.get("/v1/profiles", headers=_in(OLD, api.reader))
    refused = await api.client.get(
        "/v1/profiles/eu1_00000000000000000000000000", headers=_in(OLD, api.reader)
    )
    for answer in (old, refused):
        assert answer.headers["keel-version"] == OLD
        assert answer.headers["deprecation"] == "@1796601600"  # 2026-12-07T00:00:00Z
        assert answer.headers.get_list("link") == [DEPRECATION_LINK]
        assert "sunset" not in answer.headers
    new = await api.client.get("/v1/profiles", headers=_in(NEW, api.reader))
    assert new.headers["keel-version"] == NEW
    assert "deprecation" not in new.headers
    assert "link" not in new.headers
    # The version pinned on the key counts as the request's version.
    pinned = await api.client.get("/v1/profiles", headers=api.reader)
    assert pinned.headers["keel-version"] == OLD
    assert "deprecation" in pinned.headers


async def test_a_sunset_the_operator_sets_is_on_the_older_versions_answers(database_url: str) -> None:
    await _emptied(database_url)
    settings = Settings(database_url=database_url, api_sunsets={OLD: date(2027, 6, 30)})
    api, deployment = await make_api(settings)
    try:
        async with api.client:
            old = await api.client.get("/v1/profiles", headers=_in(OLD, api.reader))
            new = await api.client.get("/v1/profiles", headers=_in(NEW, api.reader))
            listed = (await api.client.get("/v1/versions")).json()["items"]
    finally:
        await deployment.close()
    assert old.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert old.headers.get_list("link") == [f"{DEPRECATION_LINK}, {SUNSET_LINK}"]
    assert "sunset" not in new.headers
    assert [(v["version"], v["sunset"]) for v in listed] == [(NEW, None), (OLD, "2027-06-30")]


@pytest.mark.parametrize(
    ("sunsets", "error"),
    [
        ({NEW: date(2027, 1, 1)}, "a sunset can be set only for an older version"),
        ({"2020-01-01": date(2027, 1, 1)}, "a sunset can be set only for an older version"),
        ({OLD: date(2026, 12, 6)}, "cannot sunset before its deprecation"),
    ],
)
def test_a_sunset_for_a_version_that_cannot_have_one_is_refused_at_start(
    sunsets: dict[str, date], error: str
) -> None:
    from keel.api.rest.version_lifecycle import lifecycle

    with pytest.raises(ValueError, match=error):
        lifecycle(versions, sunsets)


def test_keel_serve_refuses_a_sunset_it_cannot_have_with_the_sentence() -> None:
    result = CliRunner().invoke(
        app,
        ["serve"],
        env={
            "KEEL_DATABASE_URL": "sqlite:////nonexistent/dir/keel.sqlite3",
            "KEEL_API_SUNSETS": json.dumps({NEW: "2027-01-01"}),
        },
    )
    assert result.exit_code == 1
    assert f"keel: cannot start: KEEL_API_SUNSETS names {NEW}: a sunset can be set only" in result.output


async def test_the_list_of_versions_is_the_version_bundle_and_needs_no_key(api: Api) -> None:
    answer = await api.client.get("/v1/versions", headers={"Keel-Version": "1999-01-01"})
    assert answer.status_code == 200, answer.text
    assert "keel-version" not in answer.headers
    items = answer.json()["items"]
    assert [item["version"] for item in items] == [str(v) for v in versions.version_values]
    assert [item["status"] for item in items] == ["current", "deprecated"]
    assert items[1]["deprecated_since"] == NEW
    newest = versions.versions[0]
    assert [change["name"] for change in items[0]["changes"]] == [c.__name__ for c in newest.changes]
    assert all(change["description"] for change in items[0]["changes"])
    assert items[1]["changes"] == []


async def test_a_key_made_without_a_version_is_pinned_to_the_version_it_was_made_in(
    database_url: str,
) -> None:
    # Keys are administered on a core (an edge refuses /v1/keys): a monolith.
    await _emptied(database_url)
    api, deployment = await make_api(Settings(database_url=database_url))
    try:
        async with api.client:
            for version in (OLD, NEW):
                made = await api.client.post(
                    "/v1/keys",
                    json={"name": f"k{version}", "scopes": ["profiles:read"]},
                    headers=_in(version, api.admin),
                )
                assert made.status_code == 201, made.text
                assert made.json()["api_version"] == version
                token = made.json()["token"]
                answer = await api.client.get("/v1/profiles", headers={"Authorization": f"Bearer {token}"})
                assert answer.headers["keel-version"] == version
    finally:
        await deployment.close()


async def test_a_version_header_overrides_the_version_pinned_on_the_key(api: Api) -> None:
    await _create(api, 1)
    answer = await api.client.get("/v1/profiles", headers=_in(NEW, api.reader))
    assert set(answer.json()) == {"items", "links"}
    answer = await api.client.get("/v1/profiles", headers=api.reader)
    assert set(answer.json()) == {"items", "next_cursor"}


async def test_an_unknown_version_is_a_problem_naming_the_versions(api: Api) -> None:
    answer = await api.client.get("/v1/profiles", headers=_in("2026-12-01", api.reader))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == f"Keel-Version must be one of: {OLD}, {NEW}."


async def test_graphql_grows_by_adding_fields_whatever_the_rest_version(api: Api) -> None:
    """GraphQL is not dated: a new field (`primaryEmail`) is there for every caller, whatever
    REST version its key is pinned to, and the fields it had stay (docs/api/versions.md)."""
    created = await api.client.post("/v1/profiles", json=_profile("grace"), headers=api.writer)
    query = "query($id: ID!) { profile(id: $id) { handle primaryEmail emails { address primary } } }"
    answer = await api.client.post(
        "/graphql", json={"query": query, "variables": {"id": created.json()["id"]}}, headers=api.reader
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["profile"] == {
        "handle": "grace",
        "primaryEmail": "grace@example.com",
        "emails": [
            {"address": "grace@old.example.com", "primary": False},
            {"address": "grace@example.com", "primary": True},
        ],
    }


async def test_refusals_before_the_version_is_picked_say_the_version_is_deprecated(api: Api) -> None:
    """The layers in front of the version picker (strict bodies, admission, the envelope) refuse
    some requests before a route runs: those answers say it too, for the version asked for or
    pinned on the key; the newest version's never do."""
    wrong_type = {"Content-Type": "text/plain"}
    refusals = {
        "pinned, wrong media type": await api.client.post(
            "/v1/profiles", content=b"x", headers={**api.writer, **wrong_type}
        ),
        "pinned, malformed JSON": await api.client.post(
            "/v1/profiles", content=b"{", headers={**api.writer, "Content-Type": "application/json"}
        ),
        "asked for, wrong media type": await api.client.post(
            "/v1/profiles", content=b"x", headers={**_in(OLD, {}), **wrong_type}
        ),
    }
    for name, answer in refusals.items():
        assert answer.status_code in (400, 415), (name, answer.text)
        assert answer.headers["deprecation"] == "@1796601600", name
        assert answer.headers["link"] == DEPRECATION_LINK, name
    newest = await api.client.post(
        "/v1/profiles", content=b"x", headers={**_in(NEW, api.writer), **wrong_type}
    )
    assert newest.status_code == 415
    assert "deprecation" not in newest.headers


async def test_a_page_link_and_the_deprecation_link_are_one_field(api: Api) -> None:
    await _create(api, 3)
    page = await api.client.get("/v1/profiles", params={"limit": 1}, headers=_in(OLD, api.reader))
    links = page.headers.get_list("link")
    cursor = page.json()["next_cursor"]
    assert links == [f'</v1/profiles?limit=1&cursor={cursor}>; rel="next", {DEPRECATION_LINK}']
    assert page.headers["vary"] == "Keel-Version"


async def test_each_version_has_its_own_entity_tag_and_if_match_takes_either(api: Api) -> None:
    created = await api.client.post("/v1/profiles", json=_profile("tagged"), headers=api.writer)
    path = created.headers["location"]
    old = await api.client.get(path, headers=_in(OLD, api.reader))
    new = await api.client.get(path, headers=_in(NEW, api.reader))
    assert old.headers["etag"] != new.headers["etag"]
    assert new.headers["etag"].endswith(f'.{NEW}"')
    # A tag from one version never confirms the other version's body.
    for version, tag in ((OLD, new.headers["etag"]), (NEW, old.headers["etag"])):
        answer = await api.client.get(path, headers={**_in(version, api.reader), "If-None-Match": tag})
        assert answer.status_code == 200
    for version, answer in ((OLD, old), (NEW, new)):
        same = {**_in(version, api.reader), "If-None-Match": answer.headers["etag"]}
        assert (await api.client.get(path, headers=same)).status_code == 304
    # Either tag names the profile's version for a write.
    for number, tag in enumerate((old.headers["etag"], new.headers["etag"])):
        stale = tag.replace('"1.', '"9.', 1)
        headers = {**api.writer, **MERGE_PATCH}
        refused = await api.client.patch(path, json={"bio": "x"}, headers={**headers, "If-Match": stale})
        assert refused.status_code == 412
        current = (await api.client.get(path, headers=api.reader)).headers["etag"]
        version = current.split(".")[0].strip('"')
        tag = tag.replace('"1.', f'"{version}.', 1)
        done = await api.client.patch(path, json={"bio": f"b{number}"}, headers={**headers, "If-Match": tag})
        assert done.status_code == 200, done.text


async def test_a_request_naming_no_valid_version_gets_no_notice_from_its_key(api: Api) -> None:
    """The key is pinned to the deprecated version, but a request that names a version, even an
    empty one, is not made in the key's: refused, it gets no notice."""
    for named in ("", " ", "1999-01-01"):
        answer = await api.client.get("/v1/profiles", headers={**api.reader, "Keel-Version": named})
        assert answer.status_code == 400, named
        assert "deprecation" not in answer.headers, named


def test_if_match_takes_the_tags_keel_gives_out_and_no_other_suffix() -> None:
    from keel.api.rest.mapping import _id_tag, version_from_etag
    from keel.api.rest.profile_http import TAGGED_VERSIONS as _TAGGED_VERSIONS

    profile_id = "eu1_01KBZ8Q2Z3Y4X5W6V7T6S5R4Q3"
    tag = _id_tag(profile_id)
    for given in (f'"3.{tag}"', f'"3.{tag}.full"', f'"3.{tag}.{NEW}"', f'"3.{tag}.full.{NEW}"'):
        assert version_from_etag(profile_id, given, _TAGGED_VERSIONS) == 3, given
    for never in (f'"3.{tag}.{OLD}"', f'"3.{tag}.9999-99-99"', f'"3.{tag}.{NEW}.full"', f'"3.{tag}."'):
        assert version_from_etag(profile_id, never, _TAGGED_VERSIONS) is None, never


@pytest.mark.parametrize("api", ["monolith"], indirect=True)  # only a core serves gRPC
async def test_grpc_grows_by_adding_primary_email_output_only(grpc_channel: GrpcClient) -> None:
    """gRPC is not dated either: `Profile.primary_email` (field 14) is filled on every answer,
    ignored in a create (the primary email decides it) and refused in an update's mask. (An
    edge's REST reaches its core over gRPC: the edge runs of the other tests here cover it.)"""
    stub, metadata = grpc_channel
    sent = pb.Profile(
        handle="grace",
        emails=[
            pb.Email(address="grace@old.example.com"),
            pb.Email(address="grace@example.com", primary=True),
        ],
        primary_email="someone@else.example.com",
    )
    created = await stub.CreateProfile(pb.CreateProfileRequest(profile=sent), metadata=metadata)
    assert created.profile.primary_email == "grace@example.com"
    profile_id = created.profile.id
    read = await stub.GetProfile(pb.GetProfileRequest(id=profile_id), metadata=metadata)
    assert read.profile.primary_email == "grace@example.com"
    listed = await stub.ListProfiles(pb.ListProfilesRequest(), metadata=metadata)
    assert [p.primary_email for p in listed.profiles] == ["grace@example.com"]
    moved = pb.Profile(
        id=profile_id,
        emails=[pb.Email(address="grace@old.example.com", primary=True)],
    )
    updated = await stub.UpdateProfile(
        pb.UpdateProfileRequest(profile=moved, update_mask=FieldMask(paths=["emails"])),
        metadata=metadata,
    )
    assert updated.profile.primary_email == "grace@old.example.com"
    fields, why = await invalid_argument_fields(
        stub.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=pb.Profile(id=profile_id, primary_email="grace@example.com"),
                update_mask=FieldMask(paths=["primary_email"]),
            ),
            metadata=metadata,
        )
    )
    assert (fields, why) == (["/primary_email"], "unknown field")
