"""A service holds only its own region's profiles (issue 18's first rule): a request for another
region's id is refused with the home region named (421 problem, GraphQL `MISDIRECTED`, gRPC
`FAILED_PRECONDITION` with an ErrorInfo), on the core and through an edge, for every operation by
id, and never looked up in this region's store. A malformed id is still a 404."""

from __future__ import annotations

import asyncio
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

ELSEWHERE = "us1_01JZ0000000000000000000000"  # a well-formed id of region us1; this service is eu1


@dataclass
class Regional:
    core: str
    edge: str
    grpc_target: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regional]:
    logs = tmp_path_factory.mktemp("residency")
    grpc_port, core_port, edge_port = free_port(), free_port(), free_port()
    env = {**os.environ, "KEEL_DATABASE_URL": f"sqlite:///{logs / 'keel.sqlite3'}", "KEEL_REGION": "eu1"}
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--scopes", "admin", "--quiet").strip()
    edge_token = keel_output(env, "keys", "create", "--scopes", "edge", "--name", "edge", "--quiet").strip()
    core_env = {**env, "KEEL_PORT": str(core_port), "KEEL_GRPC_PORT": str(grpc_port)}
    edge_env = {**env, "KEEL_PORT": str(edge_port), "KEEL_CORE_API_KEY": edge_token}
    edge_cmd = keel_cmd("serve", "--core", f"grpc://127.0.0.1:{grpc_port}")
    with (
        server("core", keel_cmd("serve"), core_env, logs / "core.log", core_port),
        server("edge", edge_cmd, edge_env, logs / "edge.log", edge_port),
    ):
        yield Regional(
            f"http://127.0.0.1:{core_port}", f"http://127.0.0.1:{edge_port}", f"127.0.0.1:{grpc_port}", token
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
    headers = regional.headers
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        _assert_misdirected(client.get(f"/v1/profiles/{ELSEWHERE}"))
        merge = {"Content-Type": "application/merge-patch+json"}
        _assert_misdirected(client.patch(f"/v1/profiles/{ELSEWHERE}", json={"bio": "x"}, headers=merge))
        _assert_misdirected(client.delete(f"/v1/profiles/{ELSEWHERE}"))
        _assert_misdirected(
            client.get("/v1/profiles", params={"ids": f"eu1_01JZ0000000000000000000000,{ELSEWHERE}"})
        )
        if through == "core":  # export and erasure are a core's (an edge answers 503)
            _assert_misdirected(client.get(f"/v1/profiles/{ELSEWHERE}/export"))
            _assert_misdirected(client.post(f"/v1/profiles/{ELSEWHERE}/erasure"))
        assert client.get("/v1/profiles/us1_not-an-id").status_code == 404


def test_graphql_answers_misdirected_with_the_home_region(regional: Regional) -> None:
    query = {"query": "query($id: ID!) { profile(id: $id) { id } }", "variables": {"id": ELSEWHERE}}
    answer = httpx.post(f"{regional.core}/graphql", json=query, headers=regional.headers, timeout=10).json()
    (error,) = answer["errors"]
    assert error["extensions"]["code"] == "MISDIRECTED"
    assert error["extensions"]["homeRegion"] == "us1"


def test_grpc_answers_failed_precondition_with_the_home_region(regional: Regional) -> None:
    async def call() -> None:
        async with grpc.aio.insecure_channel(regional.grpc_target) as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetProfile(
                    pb.GetProfileRequest(id=ELSEWHERE),
                    metadata=(("authorization", f"Bearer {regional.token}"),),
                )
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        trailer = dict(refused.value.trailing_metadata() or ())[STATUS_DETAILS_KEY]
        status = status_pb2.Status.FromString(trailer)
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, dict(info.metadata)) == ("MISDIRECTED", {"home_region": "us1"})

    asyncio.run(call())
