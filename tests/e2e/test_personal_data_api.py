"""Export and erasure through the REST API, and erasure through GraphQL and gRPC: admin only (anyone
else gets the same 403 whether the profile exists or not), 404 for a profile Keel never held,
202 with a status resource that shows the saga's progress, and a second request answered with
the same erasure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from keel.api.grpc.server import GrpcServer
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.config import Settings
from keel.domain.events import PROFILE_ERASED
from tests.e2e.conftest import Api, make_api
from tests.e2e.test_rest_profiles import assert_problem
from tests.integration.conftest import truncate
from tests.integration.webhook_receivers import receiver


@pytest.fixture
async def monolith(database_url: str) -> AsyncIterator[Api]:
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    built, deployment = await make_api(Settings(database_url=database_url))
    async with built.client:
        yield built
    await deployment.close()


async def a_profile(api: Api) -> str:
    response = await api.client.post(
        "/v1/profiles",
        json={
            "handle": "rest_erasable",
            "emails": [{"address": "rest.erasable@example.org", "primary": True}],
        },
        headers=api.writer,
    )
    assert response.status_code == 201, response.text
    profile_id: str = response.json()["id"]
    return profile_id


def without_request_id(problem: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in problem.items() if k not in ("request_id", "instance")}


async def test_only_admins_export_or_erase_and_others_learn_nothing(monolith: Api) -> None:
    api = monolith
    profile_id = await a_profile(api)
    missing = profile_id[:-4] + "ZZZZ"
    refusals = [
        assert_problem(
            await api.client.get(f"/v1/profiles/{profile_id}/export", headers=api.writer), 403, "forbidden"
        ),
        assert_problem(
            await api.client.get(f"/v1/profiles/{missing}/export", headers=api.writer), 403, "forbidden"
        ),
        assert_problem(
            await api.client.post(f"/v1/profiles/{profile_id}/erasure", headers=api.writer), 403, "forbidden"
        ),
        assert_problem(
            await api.client.post(f"/v1/profiles/{missing}/erasure", headers=api.reader), 403, "forbidden"
        ),
        assert_problem(
            await api.client.get("/v1/erasures/era_missing", headers=api.writer), 403, "forbidden"
        ),
    ]
    assert len({str(sorted(without_request_id(r).items())) for r in refusals}) == 1
    assert_problem(await api.client.post(f"/v1/profiles/{profile_id}/erasure"), 401, "unauthenticated")
    # Nothing was started by the refused requests.
    runner = api.keel.local.erasure_runner
    assert runner is not None
    assert await runner.run_due() == 0


async def test_export_then_erasure_with_its_status_resource(monolith: Api) -> None:
    api = monolith
    profile_id = await a_profile(api)
    export = await api.client.get(f"/v1/profiles/{profile_id}/export", headers=api.admin)
    assert export.status_code == 200, export.text
    assert export.headers["cache-control"] == "no-store"
    assert export.json()["profile"]["handle"] == "rest_erasable"
    assert [e["type"] for e in export.json()["events"]] == ["keel.profile.created.v1"]

    assert_problem(
        await api.client.post(f"/v1/profiles/{profile_id[:-4]}ZZZZ/erasure", headers=api.admin),
        404,
        "not-found",
    )
    assert_problem(await api.client.get("/v1/erasures/era_missing", headers=api.admin), 404, "not-found")

    started = await api.client.post(f"/v1/profiles/{profile_id}/erasure", headers=api.admin)
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    assert location == f"/v1/erasures/{started.json()['id']}"
    assert started.json()["state"] == "running"
    assert started.json()["next_step"] == "remove_personal_data"

    runner = api.keel.local.erasure_runner
    assert runner is not None
    assert await runner.run_due() == 1
    status = await api.client.get(location, headers=api.admin)
    assert status.status_code == 200, status.text
    assert status.json()["state"] == "completed"
    assert all(step["done"] for step in status.json()["steps"])

    again = await api.client.post(f"/v1/profiles/{profile_id}/erasure", headers=api.admin)
    assert again.status_code == 202
    assert again.headers["location"] == location
    assert_problem(await api.client.get(f"/v1/profiles/{profile_id}", headers=api.writer), 404, "not-found")
    after = (await api.client.get(f"/v1/profiles/{profile_id}/export", headers=api.admin)).json()
    assert after["profile"] is None
    assert "rest_erasable" not in str(after)
    assert "rest.erasable@example.org" not in str(after)


ERASE = "mutation Erase($id: ID!) { eraseProfile(id: $id) { id state nextStep steps { name done } } }"
STATUS = "query Status($id: ID!) { erasure(id: $id) { id state pendingHolders steps { done } } }"


async def test_erasure_through_graphql_is_the_same_saga(monolith: Api) -> None:
    api = monolith
    profile_id = await a_profile(api)
    refused = await api.client.post(
        "/graphql", json={"query": ERASE, "variables": {"id": profile_id}}, headers=api.writer
    )
    assert refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert refused.json()["data"] is None
    missing = await api.client.post(
        "/graphql", json={"query": ERASE, "variables": {"id": profile_id[:-4] + "ZZZZ"}}, headers=api.admin
    )
    assert missing.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"

    started = await api.client.post(
        "/graphql", json={"query": ERASE, "variables": {"id": profile_id}}, headers=api.admin
    )
    erasure = started.json()["data"]["eraseProfile"]
    assert erasure["state"] == "running"
    assert erasure["nextStep"] == "remove_personal_data"
    assert [step["done"] for step in erasure["steps"]] == [False] * 6
    runner = api.keel.local.erasure_runner
    assert runner is not None
    await runner.run_due()
    status = await api.client.post(
        "/graphql", json={"query": STATUS, "variables": {"id": erasure["id"]}}, headers=api.admin
    )
    assert status.json()["data"]["erasure"] == {
        "id": erasure["id"],
        "state": "completed",
        "pendingHolders": [],
        "steps": [{"done": True}] * 6,
    }
    rest = await api.client.post(f"/v1/profiles/{profile_id}/erasure", headers=api.admin)
    assert rest.json()["id"] == erasure["id"]


async def test_erasure_through_grpc_is_the_same_saga(monolith: Api) -> None:
    api = monolith
    profile_id = await a_profile(api)
    server = GrpcServer(api.keel, api.keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ProfileServiceStub(channel)

            def as_key(headers: dict[str, str]) -> tuple[tuple[str, str]]:
                return (("authorization", headers["Authorization"]),)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EraseProfile(pb.EraseProfileRequest(id=profile_id), metadata=as_key(api.writer))
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.EraseProfile(
                    pb.EraseProfileRequest(id=profile_id[:-4] + "ZZZZ"), metadata=as_key(api.admin)
                )
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND

            started = await stub.EraseProfile(
                pb.EraseProfileRequest(id=profile_id), metadata=as_key(api.admin)
            )
            assert started.erasure.state == "running"
            assert started.erasure.next_step == "remove_personal_data"
            runner = api.keel.local.erasure_runner
            assert runner is not None
            await runner.run_due()
            status = await stub.GetErasure(
                pb.GetErasureRequest(id=started.erasure.id), metadata=as_key(api.admin)
            )
            assert status.erasure.state == "completed"
            assert [step.done for step in status.erasure.steps] == [True] * 6
            assert not status.erasure.HasField("next_step")
    finally:
        await server.stop(grace_seconds=0)


async def test_an_erasure_waits_for_a_webhook_endpoint_holding_personal_data(database_url: str) -> None:
    """Through the composed core: an endpoint registered over REST as holding personal data is
    owed the erased event, which the core's dispatcher delivers (the saga's finishing once the
    2xx is seen is tested in tests/integration/test_personal_data_lifecycle.py, on virtual time)."""
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    # Loopback receivers: the test's endpoint is on 127.0.0.1.
    api, deployment = await make_api(Settings(database_url=database_url, webhook_allow_private_targets=True))
    try:
        async with api.client, receiver(200) as endpoint:
            registered = await api.client.post(
                "/v1/webhooks",
                json={"url": endpoint.url, "event_types": [PROFILE_ERASED], "holds_personal_data": True},
                headers=api.admin,
            )
            assert registered.status_code == 201, registered.text
            profile_id = await a_profile(api)
            started = await api.client.post(f"/v1/profiles/{profile_id}/erasure", headers=api.admin)
            assert started.status_code == 202, started.text
            runner, dispatcher = api.keel.local.erasure_runner, api.keel.local.dispatcher
            assert runner is not None
            assert dispatcher is not None
            assert await runner.run_due() == 1
            status = (await api.client.get(started.headers["location"], headers=api.admin)).json()
            assert status["state"] == "running"
            assert status["next_step"] == "await_acknowledgements"
            assert status["pending_holders"] == [registered.json()["id"]]
            await dispatcher.run_once()
            await dispatcher.settle()
            [request] = await endpoint.wait_for(1)
        event = Webhook(registered.json()["secret"]).verify(request.body, request.headers)
        assert (event["type"], event["subject"]) == (PROFILE_ERASED, profile_id)
    finally:
        await deployment.close()


# Ids the database cannot even hold (a NUL byte: PostgreSQL refuses it in text), or of another
# shape: no erasure has them, so each is a not-found, never an internal error.
MALFORMED_ERASURE_IDS = ("\x00", "era_\x00" + "0" * 28, "era_missing", "era_" + "0" * 31 + "G")


async def test_a_malformed_erasure_id_is_not_found_over_rest_graphql_and_grpc(monolith: Api) -> None:
    api = monolith
    for path in ("/v1/erasures/%00", "/v1/erasures/era_%00", "/v1/erasures/era_" + "0" * 32):
        assert_problem(await api.client.get(path, headers=api.admin), 404, "not-found")
    for erasure_id in MALFORMED_ERASURE_IDS:
        answer = await api.client.post(
            "/graphql", json={"query": STATUS, "variables": {"id": erasure_id}}, headers=api.admin
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] is None, answer.text
        assert [e["extensions"]["code"] for e in answer.json()["errors"]] == ["NOT_FOUND"], answer.text
    server = GrpcServer(api.keel, api.keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            key = (("authorization", api.admin["Authorization"]),)
            for erasure_id in MALFORMED_ERASURE_IDS:
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.GetErasure(pb.GetErasureRequest(id=erasure_id), metadata=key)
                assert missing.value.code() is grpc.StatusCode.NOT_FOUND, (erasure_id, missing.value)
    finally:
        await server.stop(grace_seconds=0)
