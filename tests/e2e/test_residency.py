"""A service holds only its own region's profiles (issue 18's first rule): a request for another
region's id is refused with the home region named (421 problem, GraphQL `MISDIRECTED`, gRPC
`FAILED_PRECONDITION` with an ErrorInfo), on the core and through an edge, for every operation by
id, and never looked up: the foreign profile here really is in the store the eu1 services read
(written by a us1 service on the same file), and is still refused. A malformed id is a 404."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from testkit.ports import free_port
from testkit.processes import keel_cmd, keel_output, server

from keel.api.grpc.wire.status import STATUS_DETAILS_KEY
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc


@dataclass
class Regional:
    core: str
    edge: str
    grpc_target: str
    token: str
    elsewhere: str  # a us1 profile in the very store the eu1 services read: never to be served
    here: str  # an eu1 profile

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _create(base: str, token: str, handle: str) -> str:
    body = {"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]}
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{base}/v1/profiles", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regional]:
    logs = tmp_path_factory.mktemp("residency")
    grpc_port, core_port, edge_port, us1_port = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "KEEL_DATABASE_URL": f"sqlite:///{logs / 'keel.sqlite3'}", "KEEL_REGION": "eu1"}
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--scopes", "admin", "--quiet").strip()
    edge_token = keel_output(env, "keys", "create", "--scopes", "edge", "--name", "edge", "--quiet").strip()
    us1_env = {**env, "KEEL_REGION": "us1", "KEEL_PORT": str(us1_port)}
    with server("us1", keel_cmd("serve"), us1_env, logs / "us1.log", us1_port):
        elsewhere = _create(f"http://127.0.0.1:{us1_port}", token, "lives_in_us1")
    assert elsewhere.startswith("us1_")
    core_env = {**env, "KEEL_PORT": str(core_port), "KEEL_GRPC_PORT": str(grpc_port)}
    edge_env = {**env, "KEEL_PORT": str(edge_port), "KEEL_CORE_API_KEY": edge_token}
    edge_cmd = keel_cmd("serve", "--core", f"grpc://127.0.0.1:{grpc_port}")
    with (
        server("core", keel_cmd("serve"), core_env, logs / "core.log", core_port),
        server("edge", edge_cmd, edge_env, logs / "edge.log", edge_port),
    ):
        core = f"http://127.0.0.1:{core_port}"
        here = _create(core, token, "lives_in_eu1")
        yield Regional(
            core, f"http://127.0.0.1:{edge_port}", f"127.0.0.1:{grpc_port}", token, elsewhere, here
        )


def _assert_misdirected(answer: httpx.Response) -> None:
    assert answer.status_code == 421, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "urn:keel:problem:misdirected"
    assert problem["home_region"] == "us1"


@pytest.mark.parametrize("through", ["core", "edge"])
def test_rest_refuses_every_operation_on_another_regions_id(regional: Regional, through: str) -> None:
    base = regional.core if through == "core" else regional.edge
    there = regional.elsewhere
    with httpx.Client(base_url=base, headers=regional.headers, timeout=10) as client:
        _assert_misdirected(client.get(f"/v1/profiles/{there}"))
        merge = {"Content-Type": "application/merge-patch+json"}
        _assert_misdirected(client.patch(f"/v1/profiles/{there}", json={"bio": "x"}, headers=merge))
        _assert_misdirected(client.delete(f"/v1/profiles/{there}"))
        _assert_misdirected(client.get("/v1/profiles", params={"ids": f"{regional.here},{there}"}))
        if through == "core":  # export and erasure are a core's (an edge answers 503)
            _assert_misdirected(client.get(f"/v1/profiles/{there}/export"))
            _assert_misdirected(client.post(f"/v1/profiles/{there}/erasure"))
        assert client.get("/v1/profiles/us1_not-an-id").status_code == 404
        assert client.get(f"/v1/profiles/{regional.here}").status_code == 200


@pytest.mark.parametrize("through", ["core", "edge"])
def test_graphql_answers_misdirected_for_that_field_only(regional: Regional, through: str) -> None:
    """One foreign id does not fail the document's other fields (its loader batches them)."""
    base = regional.core if through == "core" else regional.edge
    document = "query($here: ID!, $there: ID!) { a: profile(id: $here) { id } b: profile(id: $there) { id } }"
    query = {"query": document, "variables": {"here": regional.here, "there": regional.elsewhere}}
    answer = httpx.post(f"{base}/graphql", json=query, headers=regional.headers, timeout=10).json()
    assert answer["data"] == {"a": {"id": regional.here}, "b": None}
    (error,) = answer["errors"]
    assert error["path"] == ["b"]
    assert error["extensions"]["code"] == "MISDIRECTED"
    assert error["extensions"]["homeRegion"] == "us1"
    mutation = {
        "query": 'mutation($id: ID!) { updateProfile(id: $id, patch: {bio: "x"}) { id } }',
        "variables": {"id": regional.elsewhere},
    }
    changed = httpx.post(f"{base}/graphql", json=mutation, headers=regional.headers, timeout=10).json()
    assert [e["extensions"]["code"] for e in changed["errors"]] == ["MISDIRECTED"]


def test_grpc_answers_failed_precondition_with_the_home_region(regional: Regional) -> None:
    async def call() -> None:
        key = (("authorization", f"Bearer {regional.token}"),)
        async with grpc.aio.insecure_channel(regional.grpc_target) as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetProfile(pb.GetProfileRequest(id=regional.elsewhere), metadata=key)
            with pytest.raises(grpc.aio.AioRpcError) as batch:
                await stub.BatchGetProfiles(
                    pb.BatchGetProfilesRequest(ids=[regional.here, regional.elsewhere]), metadata=key
                )
        for failed in (refused.value, batch.value):
            assert failed.code() is grpc.StatusCode.FAILED_PRECONDITION
            trailer = dict(failed.trailing_metadata() or ())[STATUS_DETAILS_KEY]
            status = status_pb2.Status.FromString(trailer)
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert (info.reason, dict(info.metadata)) == ("MISDIRECTED", {"home_region": "us1"})

    asyncio.run(call())


@pytest.mark.parametrize("through", ["core", "edge"])
def test_a_create_naming_another_region_is_refused_and_one_naming_this_region_lands(
    regional: Regional, through: str
) -> None:
    base = regional.core if through == "core" else regional.edge

    def create(handle: str, region: object) -> httpx.Response:
        body = {"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]}
        # JSON with \u escapes (json.dumps' default): a lone surrogate can be sent as a client may.
        content = json.dumps({**body, "region": region})
        headers = {**regional.headers, "Content-Type": "application/json"}
        return httpx.post(f"{base}/v1/profiles", content=content, headers=headers, timeout=10)

    _assert_misdirected(create(f"wants_us1_{through}", "us1"))
    here = create(f"wants_eu1_{through}", "eu1")
    assert here.status_code == 201, here.text
    assert here.json()["id"].startswith("eu1_")
    assert "region" not in here.json()  # not a profile field: the id says it
    for n, region in enumerate(("EU-1", "", "eu1\n", "\ud800")):  # the same answer on the core and an edge
        bad = create(f"wants_bad_{through}_{n}", region)
        assert bad.status_code == 422, (region, bad.text)
        assert [e["field"] for e in bad.json()["errors"]] == ["/region"], region
    document = (
        "mutation($h: String!, $e: String!) { createProfile(input: {handle: $h,"
        ' emails: [{address: $e, primary: true}], region: "us1"}) { profile { id } } }'
    )
    mutation = {"query": document, "variables": {"h": f"g_us1_{through}", "e": f"g{through}@example.com"}}
    refused = httpx.post(f"{base}/graphql", json=mutation, headers=regional.headers, timeout=10).json()
    assert [e["extensions"] for e in refused["errors"]] == [{"code": "MISDIRECTED", "homeRegion": "us1"}]
    malformed = {"query": document.replace('"us1"', '"EU-1"'), "variables": mutation["variables"]}
    invalid = httpx.post(f"{base}/graphql", json=malformed, headers=regional.headers, timeout=10).json()
    assert [e["extensions"]["code"] for e in invalid["errors"]] == ["VALIDATION"]
    assert invalid["errors"][0]["extensions"]["fieldErrors"][0]["field"] == "/region"


def test_grpc_refuses_a_create_naming_another_region(regional: Regional) -> None:
    async def call() -> None:
        key = (("authorization", f"Bearer {regional.token}"),)
        profile = pb.Profile(handle="rpc_us1", emails=[pb.Email(address="rpc_us1@example.com", primary=True)])
        async with grpc.aio.insecure_channel(regional.grpc_target) as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateProfile(pb.CreateProfileRequest(profile=profile, region="us1"), metadata=key)
            with pytest.raises(grpc.aio.AioRpcError) as malformed:
                await stub.CreateProfile(
                    pb.CreateProfileRequest(profile=profile, region="EU-1"), metadata=key
                )
            made = await stub.CreateProfile(
                pb.CreateProfileRequest(profile=profile, region="eu1"), metadata=key
            )
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert made.profile.id.startswith("eu1_")

    asyncio.run(call())
