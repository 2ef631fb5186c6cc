"""Regressions of a probe of Keel as an attacker (issue 13), each on every protocol it touched:
REST and GraphQL in process, gRPC over a real loopback connection to the same core."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2
from structlog.testing import capture_logs

from keel.api.application import build_http_app
from keel.api.grpc.server import GrpcServer
from keel.api.grpc.wire.metadata import ON_BEHALF_OF, ON_BEHALF_OF_SHA256
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import build_services
from keel.config import PlanSettings, PolicySettings, Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key, token_digest

SSN = "000-00-0000"
HIDDEN_CONFLICT = (
    "the change breaks a schema rule that involves attributes this key cannot read; an admin key can make it"
)
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "maxProperties": 4,
    "properties": {
        "tier": {"type": "string"},
        "score": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
        "ssn": {"type": "string", "private": True},
    },
    "dependentRequired": {"ssn": ["tier"]},
}
# Small plans for the anonymous and edge callers, with no refill within a test: a call over them
# is refused whatever the machine's speed. Everyone else has room.
_HOURLY_TEN = PlanSettings(policies=[PolicySettings(name="hourly", quota=10, window_seconds=3600)])
_ROOMY = PlanSettings(policies=[PolicySettings(name="hourly", quota=100_000, window_seconds=3600)])


@dataclass
class Probe:
    keel: Services
    client: httpx.AsyncClient
    channel: grpc.aio.Channel
    tokens: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def metadata(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    @property
    def profiles(self) -> pb_grpc.ProfileServiceAsyncStub:
        return pb_grpc.ProfileServiceStub(self.channel)

    async def gql(self, who: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=self.headers(who)
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def create(self, who: str = "admin", **document: Any) -> dict[str, Any]:
        body = {"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": True}], **document}
        response = await self.client.post("/v1/profiles", json=body, headers=self.headers(who))
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


@pytest.fixture
async def probe(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Probe]:
    schema_file = tmp_path / "attributes.json"
    schema_file.write_text(json.dumps(SCHEMA))
    settings = Settings(
        database_url=sqlite_url,
        attribute_schema=schema_file,
        ratelimit_plans={"standard": _ROOMY, "anonymous": _HOURLY_TEN, "edge": _HOURLY_TEN},
        load_shedding_enabled=False,
    )
    keel = await build_services(settings)
    server = GrpcServer(keel, keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    tokens = {}
    for name, scopes in {
        "admin": [Scope.ADMIN],
        "writer": [Scope.PROFILES_READ, Scope.PROFILES_WRITE],
        "reader": [Scope.PROFILES_READ],
        "write_only": [Scope.PROFILES_WRITE],
        "edge": [Scope.EDGE, Scope.PROFILES_READ],
    }.items():
        issued = await issue_api_key(
            keel.local.store, keel.local.clock, scopes=scopes, api_version="2026-11-28", name=name
        )
        tokens[name] = issued.token
    app = build_http_app(settings, keel.metrics)
    app.state.services = keel
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://keel.test")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Probe(keel, client, channel, tokens)
    finally:
        await channel.close()
        await client.aclose()
        await server.stop(0)
        await keel.close()


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = status_pb2.Status()
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status.ParseFromString(value)
    return status


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for detail in _status(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


# -- 1. private attributes never appear in error messages ------------------------------------


async def test_a_schema_error_shows_no_private_value_on_any_protocol(probe: Probe) -> None:
    profile = await probe.create(attributes={"tier": "gold", "ssn": SSN})
    too_many = {"attributes": {"a": 1, "b": 2, "c": 3}}  # with tier and ssn: 5 > maxProperties
    rest = await probe.client.patch(
        f"/v1/profiles/{profile['id']}",
        content=json.dumps(too_many),
        headers={**probe.headers("writer"), "Content-Type": "application/merge-patch+json"},
    )
    assert rest.status_code == 422
    # The caller's own view (tier, a, b, c) meets the schema: only the hidden `ssn` tips it over,
    # and the caller is told no more than that (not even how many hidden attributes there are).
    assert rest.json()["errors"] == [{"field": "/attributes", "message": HIDDEN_CONFLICT}]
    assert SSN not in rest.text
    assert "gold" not in rest.text

    graphql = await probe.gql(
        "writer",
        "mutation U($id: ID!, $p: ProfilePatch!) { updateProfile(id: $id, patch: $p) { id } }",
        {"id": profile["id"], "p": too_many},
    )
    assert graphql["errors"][0]["extensions"]["fieldErrors"] == [
        {"field": "/attributes", "message": HIDDEN_CONFLICT}
    ]
    assert SSN not in json.dumps(graphql)

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=pb.Profile(id=profile["id"], attributes_json=json.dumps(too_many["attributes"])),
                update_mask=FieldMask(paths=["attributes.a", "attributes.b", "attributes.c"]),
            ),
            metadata=probe.metadata("writer"),
        )
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(failure.value) == [("/attributes", HIDDEN_CONFLICT)]
    assert SSN not in str(_status(failure.value))


async def test_rules_about_private_attributes_are_not_explained_to_non_admins(probe: Probe) -> None:
    with_ssn = await probe.create(attributes={"tier": "gold", "ssn": SSN})
    without = await probe.create(
        handle="bob_b", emails=[{"address": "bob@example.com", "primary": True}], attributes={"tier": "x"}
    )
    patch_headers = {**probe.headers("writer"), "Content-Type": "application/merge-patch+json"}
    refused = await probe.client.patch(
        f"/v1/profiles/{with_ssn['id']}", content='{"attributes": {"tier": null}}', headers=patch_headers
    )
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "/attributes", "message": HIDDEN_CONFLICT}]
    assert "ssn" not in refused.text
    accepted = await probe.client.patch(
        f"/v1/profiles/{without['id']}", content='{"attributes": {"tier": null}}', headers=patch_headers
    )
    assert accepted.status_code == 200
    as_admin = await probe.client.patch(
        f"/v1/profiles/{with_ssn['id']}",
        content='{"attributes": {"tier": null}}',
        headers={**probe.headers("admin"), "Content-Type": "application/merge-patch+json"},
    )
    assert as_admin.json()["errors"] == [
        {"field": "/attributes", "message": "`tier` is required when `ssn` is present"}
    ]


async def test_any_of_and_type_errors_quote_the_schema_not_the_value(probe: Probe) -> None:
    secretish = "do-not-echo-" * 3
    response = await probe.client.post(
        "/v1/profiles",
        json={
            "handle": "ada_l",
            "emails": [{"address": "ada@example.com", "primary": True}],
            "attributes": {"score": {"x": secretish}, "tier": [secretish]},
        },
        headers=probe.headers("writer"),
    )
    assert response.status_code == 422
    assert secretish not in response.text
    assert sorted((e["field"], e["message"]) for e in response.json()["errors"]) == [
        ("/attributes/score", "must match at least one of the schemas allowed here"),
        ("/attributes/tier", "must be of type string"),
    ]


# -- 2. strings are bounded before any parser sees them --------------------------------------


async def test_a_long_locale_is_a_validation_error_on_every_protocol(probe: Probe) -> None:
    locale = "en-" + "-".join(["abcdefgh"] * 1000)  # made langcodes recurse past the stack
    document = {
        "handle": "ada_l",
        "emails": [{"address": "ada@example.com", "primary": True}],
        "locale": locale,
    }
    rest = await probe.client.post("/v1/profiles", json=document, headers=probe.headers("writer"))
    assert rest.status_code == 422
    assert [e["field"] for e in rest.json()["errors"]] == ["/locale"]

    graphql = await probe.gql(
        "writer",
        "mutation C($i: CreateProfileInput!) { createProfile(input: $i) { replayed } }",
        {"i": document},
    )
    assert graphql["errors"][0]["extensions"]["code"] == "VALIDATION"

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.CreateProfile(
            pb.CreateProfileRequest(
                profile=pb.Profile(
                    handle="ada_l", emails=[pb.Email(address="ada@example.com", primary=True)], locale=locale
                )
            ),
            metadata=probe.metadata("writer"),
        )
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in _violations(failure.value)] == ["/locale"]


# -- 3. nothing stored authenticates; a proof names one key ----------------------------------


async def test_a_copy_of_the_database_does_not_authenticate(probe: Probe) -> None:
    profile = await probe.create()
    admin_id = probe.tokens["admin"].split("_")[1]
    async with probe.keel.local.store.unit_of_work(read_only=True) as uow:
        stored = await uow.api_keys.get(admin_id)
    assert stored is not None
    assert stored.secret_hash != token_digest(probe.tokens["admin"])
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.GetProfile(
            pb.GetProfileRequest(id=profile["id"]),
            metadata=(
                *probe.metadata("edge"),
                (ON_BEHALF_OF, admin_id),
                (ON_BEHALF_OF_SHA256, stored.secret_hash),
            ),
        )
    assert failure.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_proof_of_one_key_does_not_act_for_another(probe: Probe) -> None:
    profile = await probe.create()
    # The reader's digest is in the key cache once the reader has called.
    await probe.profiles.GetProfile(pb.GetProfileRequest(id=profile["id"]), metadata=probe.metadata("reader"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.GetProfile(
            pb.GetProfileRequest(id=profile["id"]),
            metadata=(
                *probe.metadata("edge"),
                (ON_BEHALF_OF, probe.tokens["admin"].split("_")[1]),
                (ON_BEHALF_OF_SHA256, token_digest(probe.tokens["reader"])),
            ),
        )
    assert failure.value.code() is grpc.StatusCode.UNAUTHENTICATED


# -- 4. every gRPC call is charged -----------------------------------------------------------


async def test_an_edge_key_is_rate_limited_on_grpc(probe: Probe) -> None:
    profile = await probe.create()
    codes = []
    for _ in range(12):  # the edge plan allows 10 in the hour
        try:
            await probe.profiles.GetProfile(
                pb.GetProfileRequest(id=profile["id"]),
                metadata=(
                    *probe.metadata("edge"),
                    (ON_BEHALF_OF, probe.tokens["reader"].split("_")[1]),
                    (ON_BEHALF_OF_SHA256, token_digest(probe.tokens["reader"])),
                ),
            )
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
    assert codes == [grpc.StatusCode.OK] * 10 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


async def test_calls_without_a_valid_key_are_charged_to_their_address(probe: Probe) -> None:
    codes = []
    for attempt in range(12):  # the anonymous plan allows 10 in the hour
        token = f"keel_{'a' * 16}_{attempt:040d}"
        try:
            await probe.profiles.GetProfile(
                pb.GetProfileRequest(id="eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J"),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 10 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


# -- 5. a write-only key cannot read by writing; the access log names the key ---------------


async def test_a_write_only_key_gets_a_receipt_not_the_profile(probe: Probe) -> None:
    profile = await probe.create(bio="a private biography")
    key_id = probe.tokens["write_only"].split("_")[1]
    with capture_logs() as logs:
        rest = await probe.client.patch(
            f"/v1/profiles/{profile['id']}",
            content="{}",
            headers={**probe.headers("write_only"), "Content-Type": "application/merge-patch+json"},
        )
    assert rest.status_code == 204
    assert rest.content == b""
    assert rest.headers["etag"].startswith(f'"{profile["version"]}.')
    access = [line for line in logs if line["event"] == "request"]
    assert [line["key_id"] for line in access] == [key_id]

    update = "mutation U($id: ID!) { updateProfile(id: $id, patch: {}) { id version %s } }"
    refused = await probe.gql("write_only", update % "emails { address }", {"id": profile["id"]})
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "ada@example.com" not in json.dumps(refused)
    receipt = await probe.gql("write_only", update % "updatedAt", {"id": profile["id"]})
    assert receipt["data"]["updateProfile"]["id"] == profile["id"]

    with capture_logs() as logs:
        answer = await probe.profiles.UpdateProfile(
            pb.UpdateProfileRequest(profile=pb.Profile(id=profile["id"]), update_mask=FieldMask()),
            metadata=probe.metadata("write_only"),
        )
    assert answer.profile.id == profile["id"]
    assert answer.profile.version == profile["version"]
    assert (answer.profile.handle, list(answer.profile.emails), answer.profile.bio) == ("", [], "")
    assert [line["key_id"] for line in logs if line["event"] == "rpc"] == [key_id]


# -- 6. If-Match values that were a 500 -------------------------------------------------------


@pytest.mark.parametrize("version", ["²", "1" * 4400, "١"])
async def test_odd_if_match_versions_are_a_failed_precondition(probe: Probe, version: str) -> None:
    profile = await probe.create()
    read = await probe.client.get(f"/v1/profiles/{profile['id']}", headers=probe.headers("writer"))
    tag = read.headers["etag"].strip('"').partition(".")[2]
    # Raw bytes, as the probe sent them: "²" as the single byte 0xB2 (what `isdigit` took).
    value = f'"{version}.{tag}"'
    raw = value.encode("latin-1") if version != "١" else value.encode()
    response = await probe.client.patch(
        f"/v1/profiles/{profile['id']}",
        content='{"bio": "x"}',
        headers=[
            *((k.encode(), v.encode()) for k, v in probe.headers("writer").items()),
            (b"Content-Type", b"application/merge-patch+json"),
            (b"If-Match", raw),
        ],
    )
    assert response.status_code == 412


# -- 7. forged cursors -------------------------------------------------------------------------


def _forged_cursor(after_id: str) -> str:
    """A cursor of the unsigned format, for an unfiltered listing (its filter tag is right)."""
    no_filters = json.dumps(
        {"email": None, "handle": None, "ids": None}, sort_keys=True, separators=(",", ":")
    )
    raw = json.dumps({"a": after_id, "f": hashlib.sha256(no_filters.encode()).hexdigest()[:12]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("after_id", ["\ud800", "eu1_00000000000000000000000000"])
async def test_forged_cursors_are_refused_on_every_protocol(probe: Probe, after_id: str) -> None:
    cursor = _forged_cursor(after_id)
    rest = await probe.client.get("/v1/profiles", params={"cursor": cursor}, headers=probe.headers("reader"))
    assert rest.status_code == 422
    assert rest.json()["errors"][0]["field"] == "/cursor"

    graphql = await probe.gql(
        "reader", "query L($c: String) { profiles(after: $c) { edges { cursor } } }", {"c": cursor}
    )
    assert graphql["errors"][0]["extensions"]["code"] == "VALIDATION"

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.ListProfiles(
            pb.ListProfilesRequest(page_token=cursor), metadata=probe.metadata("reader")
        )
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_tampered_cursor_is_refused(probe: Probe) -> None:
    await probe.create()
    await probe.create(handle="bob_b", emails=[{"address": "bob@example.com", "primary": True}])
    first = await probe.client.get("/v1/profiles", params={"limit": 1}, headers=probe.headers("reader"))
    cursor = first.json()["next_cursor"]
    payload, _, tag = cursor.partition(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["a"] = "eu1_00000000000000000000000000"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=") + "." + tag
    assert (
        await probe.client.get("/v1/profiles", params={"cursor": cursor}, headers=probe.headers("reader"))
    ).status_code == 200
    tampered = await probe.client.get(
        "/v1/profiles", params={"cursor": forged}, headers=probe.headers("reader")
    )
    assert tampered.status_code == 422


# -- 9. one size limit on the stored document, whatever the protocol ---------------------------


async def test_a_profile_cannot_grow_past_the_document_limit(probe: Probe) -> None:
    profile = await probe.create()
    big = "x" * 40_000
    patch_headers = {**probe.headers("writer"), "Content-Type": "application/merge-patch+json"}
    first = await probe.client.patch(
        f"/v1/profiles/{profile['id']}",
        content=json.dumps({"attributes": {"tier": big}}),
        headers=patch_headers,
    )
    assert first.status_code == 200
    second = await probe.client.patch(
        f"/v1/profiles/{profile['id']}",
        content=json.dumps({"attributes": {"note": big}}),
        headers=patch_headers,
    )
    assert second.status_code == 422
    assert second.json()["errors"][0]["field"] == ""

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=pb.Profile(id=profile["id"], attributes_json=json.dumps({"note": big})),
                update_mask=FieldMask(paths=["attributes.note"]),
            ),
            metadata=probe.metadata("writer"),
        )
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as huge:
        await probe.profiles.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=pb.Profile(id=profile["id"], attributes_json=json.dumps({"tier": "x" * 3_000_000})),
                update_mask=FieldMask(paths=["attributes.tier"]),
            ),
            metadata=probe.metadata("writer"),
        )
    assert huge.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    read = await probe.client.get(f"/v1/profiles/{profile['id']}", headers=probe.headers("writer"))
    assert len(read.content) < 64 * 1024


# -- 10. one email normalization for writes, uniqueness and search -----------------------------


async def test_email_look_alikes_are_one_address_everywhere(probe: Probe) -> None:
    await probe.create(emails=[{"address": "grace@example.com", "primary": True}])
    fullwidth = await probe.client.post(
        "/v1/profiles",
        json={"handle": "grace_2", "emails": [{"address": "ｇｒａｃｅ@example.com", "primary": True}]},
        headers=probe.headers("writer"),
    )
    assert fullwidth.status_code == 409
    created = await probe.create(handle="bob_b", emails=[{"address": "bob@bücher.example", "primary": True}])
    for spelled in ("bob@xn--bcher-kva.example", "BOB@BÜCHER.example", "bob@bücher.example"):
        rest = await probe.client.get(
            "/v1/profiles", params={"email": spelled}, headers=probe.headers("reader")
        )
        assert [item["id"] for item in rest.json()["items"]] == [created["id"]], spelled
        graphql = await probe.gql(
            "reader",
            "query F($e: String) { profiles(filter: {email: $e}) { edges { node { id } } } }",
            {"e": spelled},
        )
        assert [edge["node"]["id"] for edge in graphql["data"]["profiles"]["edges"]] == [created["id"]]
        listed = await probe.profiles.ListProfiles(
            pb.ListProfilesRequest(email=spelled), metadata=probe.metadata("reader")
        )
        assert [p.id for p in listed.profiles] == [created["id"]]


# -- found by a second probe, after the fixes above -------------------------------------------


async def test_repeated_credentials_are_refused_on_every_protocol(probe: Probe) -> None:
    profile = await probe.create()
    twice = [
        ("Authorization", f"Bearer {probe.tokens['reader']}"),
        ("Authorization", f"Bearer {probe.tokens['admin']}"),
    ]
    rest = await probe.client.get(f"/v1/profiles/{profile['id']}", headers=twice)
    assert rest.status_code == 401
    graphql = await probe.client.post("/graphql", json={"query": "{ viewer { keyId } }"}, headers=twice)
    assert graphql.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.GetProfile(
            pb.GetProfileRequest(id=profile["id"]),
            metadata=(*probe.metadata("reader"), *probe.metadata("admin")),
        )
    assert failure.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_repeated_query_parameters_are_refused(probe: Probe) -> None:
    first = await probe.create()
    second = await probe.create(handle="bob_b", emails=[{"address": "bob@example.com", "primary": True}])
    rest = await probe.client.get(
        "/v1/profiles", params=[("ids", first["id"]), ("ids", second["id"])], headers=probe.headers("reader")
    )
    assert rest.status_code == 400
    assert "`ids`" in rest.json()["detail"]
    graphql = await probe.client.get(
        "/graphql",
        params=[("query", "{ viewer { keyId } }"), ("query", "{ viewer { scopes } }")],
        headers=probe.headers("reader"),
    )
    assert graphql.status_code == 400
    assert graphql.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_grpc_metadata_is_bounded_like_http_headers(probe: Probe) -> None:
    profile = await probe.create()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await probe.profiles.GetProfile(
            pb.GetProfileRequest(id=profile["id"]),
            metadata=(*probe.metadata("reader"), ("x-pad", "a" * 64 * 1024)),
            timeout=10,
        )
    assert failure.value.code() is not grpc.StatusCode.OK
    answered = await probe.profiles.GetProfile(
        pb.GetProfileRequest(id=profile["id"]), metadata=probe.metadata("reader")
    )
    assert answered.profile.id == profile["id"]


async def test_every_operation_documents_the_refusals_any_request_can_get(probe: Probe) -> None:
    document = (await probe.client.get("/openapi.json", params={"version": "2026-11-28"})).json()
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            assert {"408", "413", "414", "431"} <= operation["responses"].keys(), (method, path)


async def test_schema_hints_are_cut_when_introspection_is_off(sqlite_url: str) -> None:
    for introspection, hinted in ((True, True), (False, False)):
        settings = Settings(database_url=sqlite_url, graphql_introspection=introspection)
        keel = await build_services(settings)
        app = build_http_app(settings, keel.metrics)
        app.state.services = keel
        issued = await issue_api_key(
            keel.local.store,
            keel.local.clock,
            scopes=[Scope.PROFILES_READ],
            api_version="2026-11-28",
            name="r",
        )
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
            ) as client:
                response = await client.post(
                    "/graphql",
                    json={"query": '{ profile(id: "x") { handl } }'},
                    headers={"Authorization": f"Bearer {issued.token}"},
                )
        finally:
            await keel.close()
        message = response.json()["errors"][0]["message"]
        assert ("Did you mean" in message) is hinted, message
