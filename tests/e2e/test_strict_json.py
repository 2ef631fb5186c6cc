"""Every protocol reads what callers send with one strict JSON reader: an object with a key twice,
a body that is not UTF-8 (UTF-16, a byte order mark) and a body whose media type is not exactly
the operation's (at most with `charset=utf-8`) are refused with a clear error, never read with a
guess: 400 or 415 problems on REST, BAD_REQUEST / UNSUPPORTED_MEDIA_TYPE on GraphQL, and
INVALID_ARGUMENT with a field violation on gRPC."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2

from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.config import Settings
from tests.e2e.conftest import Api, GrpcClient, make_api

PROFILE = {"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": True}]}
DUPLICATED_HANDLE = b'{"handle": "ada_l", "handle": "eve_x", "emails": [{"address": "a@example.com"}]}'
DUPLICATED_NESTED = b'{"handle": "ada_l", "emails": [{"address": "a@example.com", "primary": true}], "attributes": {"tier": 1, "tier": 2}}'  # noqa: E501 - one document, kept readable as sent
UNSUPPORTED_MEDIA_TYPES = [
    "text/plain",
    "application/x-foo+json",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json; charset=utf-8; version=2",
    "application/jsonx",
]
PROBLEM = "urn:keel:problem:"


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[Api]:
    built, deployment = await make_api(Settings(database_url=sqlite_url))
    async with built.client:
        yield built
    await deployment.close()


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    kind: str = response.json()["type"]
    return kind


def not_utf8(document: dict[str, Any]) -> dict[str, bytes]:
    """The document in encodings other than UTF-8; it holds a non-ASCII character, so that its
    Latin-1 encoding is not UTF-8 by chance."""
    text = json.dumps(document, ensure_ascii=False)
    assert not text.isascii()
    return {
        "utf-16": text.encode("utf-16"),  # with its BOM
        "utf-16-le": text.encode("utf-16-le"),
        "utf-32": text.encode("utf-32"),
        "utf-8 with BOM": b"\xef\xbb\xbf" + text.encode(),
        "latin-1": text.encode("latin-1"),
    }


# -- REST ----------------------------------------------------------------------------------------


async def test_rest_create_refuses_duplicate_keys_naming_the_key(api: Api) -> None:
    headers = {**api.writer, "Content-Type": "application/json"}
    for body, key in ((DUPLICATED_HANDLE, '"handle"'), (DUPLICATED_NESTED, '"tier"')):
        response = await api.client.post("/v1/profiles", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert problem_type(response) == PROBLEM + "bad-request"
        assert key in response.json()["detail"]
    listed = await api.client.get("/v1/profiles", headers=api.reader)
    assert listed.json()["items"] == []


async def test_rest_create_refuses_bodies_that_are_not_utf8(api: Api) -> None:
    headers = {**api.writer, "Content-Type": "application/json"}
    for name, body in not_utf8({**PROFILE, "display_name": "Ad\u00e9"}).items():
        response = await api.client.post("/v1/profiles", content=body, headers=headers)
        assert response.status_code == 400, (name, response.text)
        assert problem_type(response) == PROBLEM + "bad-request"
        assert "UTF-8" in response.json()["detail"], name


@pytest.mark.parametrize("content_type", [*UNSUPPORTED_MEDIA_TYPES, None])
async def test_rest_create_refuses_other_media_types_with_415(api: Api, content_type: str | None) -> None:
    headers = {**api.writer} if content_type is None else {**api.writer, "Content-Type": content_type}
    response = await api.client.post("/v1/profiles", content=json.dumps(PROFILE).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert problem_type(response) == PROBLEM + "unsupported-media-type"
    assert "application/json" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; Charset=UTF-8", 'application/json;charset="utf-8"'],
)
async def test_rest_create_takes_json_with_at_most_a_utf8_charset(api: Api, content_type: str) -> None:
    body = json.dumps(PROFILE).encode()
    response = await api.client.post(
        "/v1/profiles", content=body, headers={**api.writer, "Content-Type": content_type}
    )
    assert response.status_code == 201, response.text


async def created(api: Api) -> tuple[str, str]:
    response = await api.client.post("/v1/profiles", json=PROFILE, headers=api.writer)
    assert response.status_code == 201, response.text
    return response.headers["location"], response.headers["etag"]


async def test_rest_patch_refuses_duplicate_keys_and_bodies_that_are_not_utf8(api: Api) -> None:
    location, _ = await created(api)
    headers = {**api.writer, "Content-Type": "application/merge-patch+json"}
    duplicated = await api.client.patch(location, content=b'{"bio": "a", "bio": "b"}', headers=headers)
    assert duplicated.status_code == 400, duplicated.text
    assert problem_type(duplicated) == PROBLEM + "bad-request"
    assert '"bio"' in duplicated.json()["detail"]
    for name, body in not_utf8({"bio": "caf\u00e9"}).items():
        response = await api.client.patch(location, content=body, headers=headers)
        assert response.status_code == 400, (name, response.text)
        assert problem_type(response) == PROBLEM + "bad-request"
    unchanged = await api.client.get(location, headers=api.reader)
    assert unchanged.json()["bio"] is None


@pytest.mark.parametrize(
    "content_type",
    ["application/merge-patch+json; charset=latin-1", "application/json", "application/x-foo+json"],
)
async def test_rest_patch_refuses_other_media_types_with_415(api: Api, content_type: str) -> None:
    location, _ = await created(api)
    response = await api.client.patch(
        location, content=b'{"bio": "a"}', headers={**api.writer, "Content-Type": content_type}
    )
    assert response.status_code == 415, response.text
    assert problem_type(response) == PROBLEM + "unsupported-media-type"


async def test_rest_patch_body_is_validated_before_the_precondition(api: Api) -> None:
    location, _ = await created(api)
    headers = {**api.writer, "Content-Type": "application/merge-patch+json", "If-Match": ""}
    response = await api.client.patch(location, content=b"false", headers=headers)
    assert response.status_code == 422, response.text
    assert problem_type(response) == PROBLEM + "validation"
    # A valid body with the same If-Match still fails its precondition.
    response = await api.client.patch(location, content=b"{}", headers=headers)
    assert response.status_code == 412, response.text


# -- GraphQL -------------------------------------------------------------------------------------

CREATE = "mutation C($input: CreateProfileInput!) { createProfile(input: $input) { profile { id } } }"
LIST = "query L($n: Int) { profiles(first: $n) { totalCount } }"


def graphql_codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json().get("errors", [])]


async def test_graphql_post_refuses_duplicate_keys_in_the_body_and_in_variables(api: Api) -> None:
    headers = {**api.writer, "Content-Type": "application/json"}
    top_level = b'{"query": "{ viewer { keyId } }", "query": "{ __typename }"}'
    in_variables = (
        b'{"query": "' + CREATE.encode() + b'", "variables": {"input": {"handle": "ada_l", "handle": "eve_x",'
        b' "emails": [{"address": "a@example.com", "primary": true}]}}}'
    )
    for body, key in ((top_level, '"query"'), (in_variables, '"handle"')):
        response = await api.client.post("/graphql", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert graphql_codes(response) == ["BAD_REQUEST"]
        assert key in response.json()["errors"][0]["message"]
    listed = await api.client.get("/v1/profiles", headers=api.reader)
    assert listed.json()["items"] == []


async def test_graphql_post_refuses_bodies_that_are_not_utf8(api: Api) -> None:
    headers = {**api.reader, "Content-Type": "application/json"}
    for name, body in not_utf8({"query": "{ viewer { keyId } }", "operationName": "ad\u00e9_l"}).items():
        response = await api.client.post("/graphql", content=body, headers=headers)
        assert response.status_code == 400, (name, response.text)
        assert graphql_codes(response) == ["BAD_REQUEST"], name


@pytest.mark.parametrize("content_type", UNSUPPORTED_MEDIA_TYPES)
async def test_graphql_post_refuses_other_media_types_with_415(api: Api, content_type: str) -> None:
    response = await api.client.post(
        "/graphql",
        content=json.dumps({"query": "{ viewer { keyId } }"}).encode(),
        headers={**api.reader, "Content-Type": content_type},
    )
    assert response.status_code == 415, response.text
    assert graphql_codes(response) == ["UNSUPPORTED_MEDIA_TYPE"]


async def test_graphql_post_takes_json_with_a_utf8_charset(api: Api) -> None:
    response = await api.client.post(
        "/graphql",
        content=json.dumps({"query": "{ viewer { keyId } }"}).encode(),
        headers={**api.reader, "Content-Type": "application/json; charset=UTF-8"},
    )
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()


@pytest.mark.parametrize("parameter", ["variables", "extensions"])
async def test_graphql_get_refuses_duplicate_keys_in_json_parameters(api: Api, parameter: str) -> None:
    value = '{"n": 1, "n": 2}' if parameter == "variables" else '{"a": {}, "a": {}}'
    response = await api.client.get("/graphql", params={"query": LIST, parameter: value}, headers=api.reader)
    assert response.status_code == 400, response.text
    assert graphql_codes(response) == ["BAD_REQUEST"]
    message = response.json()["errors"][0]["message"]
    assert parameter in message
    assert "twice" in message


async def test_graphql_get_refuses_a_bom_in_json_parameters(api: Api) -> None:
    response = await api.client.get(
        "/graphql", params={"query": LIST, "variables": '\ufeff{"n": 1}'}, headers=api.reader
    )
    assert response.status_code == 400, response.text
    assert graphql_codes(response) == ["BAD_REQUEST"]


# -- gRPC ----------------------------------------------------------------------------------------


async def invalid_argument_fields(call: Awaitable[object]) -> tuple[list[str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    details = dict(failure.value.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(details, bytes)
    status = status_pb2.Status()
    status.ParseFromString(details)
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    return [v.field for v in bad.field_violations], " ".join(v.description for v in bad.field_violations)


DUPLICATED_ATTRIBUTES = '{"tier": 1, "tier": 2}'


async def test_grpc_create_refuses_duplicate_keys_in_attributes_json(
    grpc_channel: GrpcClient, api: Api
) -> None:
    stub, metadata = grpc_channel
    profile = pb.Profile(
        handle="ada_l",
        emails=[pb.Email(address="ada@example.com", primary=True)],
        attributes_json=DUPLICATED_ATTRIBUTES,
    )
    fields, description = await invalid_argument_fields(
        stub.CreateProfile(pb.CreateProfileRequest(profile=profile), metadata=metadata, timeout=5)
    )
    assert fields == ["/attributes"]
    assert '"tier"' in description
    listed = await api.client.get("/v1/profiles", headers=api.reader)
    assert listed.json()["items"] == []


async def test_grpc_update_refuses_duplicate_keys_in_attributes_json(
    grpc_channel: GrpcClient, api: Api
) -> None:
    stub, metadata = grpc_channel
    location, _ = await created(api)
    profile_id = location.rsplit("/", 1)[1]
    for bad in (DUPLICATED_ATTRIBUTES, '\ufeff{"tier": 1}'):
        request = pb.UpdateProfileRequest(
            profile=pb.Profile(id=profile_id, attributes_json=bad),
            update_mask=FieldMask(paths=["attributes"]),
        )
        fields, _ = await invalid_argument_fields(stub.UpdateProfile(request, metadata=metadata, timeout=5))
        assert fields == ["/attributes"]
    unchanged = await api.client.get(location, headers=api.reader)
    assert unchanged.json()["attributes"] == {}
