"""The gRPC API's deadlines and the edge's failure modes, on real sockets: a core over a real
PostgreSQL behind the fault proxy, its gRPC server on loopback, and an edge in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, MutableMapping
from typing import Any, TypedDict, Unpack

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2
from structlog.testing import capture_logs
from testkit.faultproxy import FaultProxy, Faults

from keel.api.application import build_http_app
from keel.api.grpc.server import GrpcServer
from keel.api.grpc.wire.metadata import ON_BEHALF_OF, ON_BEHALF_OF_SHA256
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import build_services
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import credentials, issue_api_key, revoke_api_key
from tests.e2e.conftest import deploy
from tests.integration.test_degradation import SteppedClock, eventually, proxy, through

__all__ = ["proxy"]  # the fixture, imported for use here
DOC = pb.Profile(handle="ada_l", emails=[pb.Email(address="ada@example.com", primary=True)])


@pytest.fixture
async def core(migrated_postgres_url: str, proxy: FaultProxy) -> AsyncIterator[tuple[Services, GrpcServer]]:
    keel = await build_services(
        Settings(
            database_url=through(migrated_postgres_url, proxy),
            db_timeout_seconds=5.0,  # longer than the callers' deadlines: theirs must win
            cache_enabled=False,
            ratelimit_enabled=False,
        )
    )
    server = GrpcServer(keel, keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    yield keel, server
    await server.stop(0)
    await keel.close()


async def _token(keel: Services, *scopes: Scope) -> str:
    issued = await issue_api_key(
        keel.local.store, keel.local.clock, scopes=scopes, api_version="2026-11-28", name="t"
    )
    return issued.token


async def _core_logged(logs: list[MutableMapping[str, Any]], method: str) -> list[MutableMapping[str, Any]]:
    """The core's access lines for `method`, once there is one: the core writes its line when
    its handler unwinds, which may come after the caller's error. Waits on that event, bounded
    only against a hang."""

    def lines() -> list[MutableMapping[str, Any]]:
        return [line for line in logs if line["event"] == "rpc" and line["method"].endswith(f"/{method}")]

    async def logged() -> bool:
        return bool(lines())

    await eventually(logged, f"the core logged its {method} call")
    return lines()


async def test_the_callers_deadline_reaches_the_database(
    core: tuple[Services, GrpcServer], proxy: FaultProxy
) -> None:
    keel, server = core
    token = await _token(keel, Scope.PROFILES_READ, Scope.PROFILES_WRITE)
    metadata = (("authorization", f"Bearer {token}"),)
    with capture_logs() as logs:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            created = await stub.CreateProfile(
                pb.CreateProfileRequest(profile=DOC), metadata=metadata, timeout=5
            )
            proxy.set_faults(Faults(latency_ms=1500))
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.GetProfile(
                    pb.GetProfileRequest(id=created.profile.id), metadata=metadata, timeout=0.3
                )
        assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        (served,) = await _core_logged(logs, "GetProfile")
    # The core got the caller's 0.3 s (what was left of it on arrival), and its database work,
    # slowed to 1.5 s, was cut there rather than at the database timeout (5 s): a read that had
    # waited for the database would have ended OK.
    assert 0 < served["deadline_ms"] <= 300, served
    assert served["code"] in ("DEADLINE_EXCEEDED", "CANCELLED"), served
    assert keel.metrics.registry.get_sample_value("keel_db_pool_connections_in_use") == 0  # given back


class TextFields(TypedDict, total=False):
    """Text fields of a `pb.Profile`, to set in a partial update."""

    handle: str
    attributes_json: str


async def test_errors_carry_canonical_codes_and_rich_details(core: tuple[Services, GrpcServer]) -> None:
    keel, server = core
    reader = await _token(keel, Scope.PROFILES_READ)
    writer = await _token(keel, Scope.PROFILES_READ, Scope.PROFILES_WRITE)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ProfileServiceStub(channel)

        async def code_of(call: Awaitable[object], token: str) -> tuple[grpc.StatusCode, status_pb2.Status]:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            details = dict(failure.value.trailing_metadata() or ()).get("grpc-status-details-bin")
            status = status_pb2.Status()
            if isinstance(details, bytes):
                status.ParseFromString(details)
            return failure.value.code(), status

        def auth(token: str) -> tuple[tuple[str, str]]:
            return (("authorization", f"Bearer {token}"),)

        created = await stub.CreateProfile(
            pb.CreateProfileRequest(profile=DOC), metadata=auth(writer), timeout=5
        )
        cases: dict[str, Awaitable[object]] = {
            "forbidden": stub.CreateProfile(
                pb.CreateProfileRequest(profile=DOC), metadata=auth(reader), timeout=5
            ),
            "exists": stub.CreateProfile(
                pb.CreateProfileRequest(profile=DOC), metadata=auth(writer), timeout=5
            ),
            "invalid": stub.ListProfiles(
                pb.ListProfilesRequest(page_size=1000), metadata=auth(reader), timeout=5
            ),
            "stale": stub.DeleteProfile(
                pb.DeleteProfileRequest(id=created.profile.id, expected_versions=[7]),
                metadata=auth(writer),
                timeout=5,
            ),
            "too_many": stub.BatchGetProfiles(
                pb.BatchGetProfilesRequest(ids=[f"id{i}" for i in range(501)]),
                metadata=auth(reader),
                timeout=5,
            ),
            "bad_key": stub.GetProfile(
                pb.GetProfileRequest(id="x"), metadata=auth("keel_garbage"), timeout=5
            ),
            "bad_request_id": stub.CreateProfile(
                pb.CreateProfileRequest(profile=DOC, request_id="\u00e9"), metadata=auth(writer), timeout=5
            ),
        }
        seen = {name: await code_of(call, writer) for name, call in cases.items()}

    def reason(status: status_pb2.Status) -> str:
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        return f"{info.domain}:{info.reason}"

    assert seen["forbidden"][0] is grpc.StatusCode.PERMISSION_DENIED
    assert seen["exists"][0] is grpc.StatusCode.ALREADY_EXISTS
    assert reason(seen["exists"][1]) == "keel:CONFLICT"
    assert seen["invalid"][0] is grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert seen["invalid"][1].details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["/page_size"]
    assert seen["stale"][0] is grpc.StatusCode.FAILED_PRECONDITION
    assert reason(seen["stale"][1]) == "keel:VERSION_MISMATCH"
    assert seen["too_many"][0] is grpc.StatusCode.INVALID_ARGUMENT
    assert seen["bad_key"][0] is grpc.StatusCode.UNAUTHENTICATED
    assert seen["bad_request_id"][0] is grpc.StatusCode.INVALID_ARGUMENT


async def test_only_an_edge_key_may_act_for_another_and_only_with_proof(
    core: tuple[Services, GrpcServer],
) -> None:
    keel, server = core
    admin = await _token(keel, Scope.ADMIN)
    edge = await _token(keel, Scope.EDGE)
    reader = await _token(keel, Scope.PROFILES_READ)
    reader_id, reader_proof = credentials(reader)

    def auth(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"), *extra)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        callers = pb_grpc.CallerServiceStub(channel)
        profiles = pb_grpc.ProfileServiceStub(channel)
        resolve = pb.GetCallerRequest(key_id=reader_id, token_sha256=reader_proof)
        acting = (ON_BEHALF_OF, reader_id), (ON_BEHALF_OF_SHA256, reader_proof)
        # An admin or a reader key is not an edge: it may neither resolve other keys nor act as them.
        for call in (
            callers.GetCaller(resolve, metadata=auth(admin), timeout=5),
            callers.GetCaller(pb.GetCallerRequest(), metadata=auth(admin, *acting), timeout=5),
            profiles.ListProfiles(pb.ListProfilesRequest(), metadata=auth(reader, *acting), timeout=5),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # An edge key acts for a caller only with the proof that it holds the caller's token.
        wrong_proof = (ON_BEHALF_OF, reader_id), (ON_BEHALF_OF_SHA256, "0" * 64)
        with pytest.raises(grpc.aio.AioRpcError) as unproven:
            await profiles.ListProfiles(
                pb.ListProfilesRequest(), metadata=auth(edge, *wrong_proof), timeout=5
            )
        assert unproven.value.code() is grpc.StatusCode.UNAUTHENTICATED
        listed = await profiles.ListProfiles(
            pb.ListProfilesRequest(), metadata=auth(edge, *acting), timeout=5
        )
        assert list(listed.profiles) == []
        resolved = await callers.GetCaller(resolve, metadata=auth(edge), timeout=5)
        assert list(resolved.scopes) == ["profiles:read"]


async def test_hostile_requests_get_invalid_argument_never_internal(
    core: tuple[Services, GrpcServer],
) -> None:
    keel, server = core
    writer = await _token(keel, Scope.PROFILES_READ, Scope.PROFILES_WRITE)
    metadata = (("authorization", f"Bearer {writer}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ProfileServiceStub(channel)
        created = await stub.CreateProfile(pb.CreateProfileRequest(profile=DOC), metadata=metadata, timeout=5)
        profile_id = created.profile.id

        def update(paths: list[str], **fields: Unpack[TextFields]) -> Awaitable[pb.UpdateProfileResponse]:
            return stub.UpdateProfile(
                pb.UpdateProfileRequest(
                    profile=pb.Profile(id=profile_id, **fields),
                    update_mask=FieldMask(paths=paths),
                ),
                metadata=metadata,
                timeout=5,
            )

        deep = "[" * 100_000 + "]" * 100_000
        calls: dict[str, Awaitable[object]] = {
            "deep attributes": stub.CreateProfile(
                pb.CreateProfileRequest(profile=pb.Profile(handle="x_y_z", attributes_json=deep)),
                metadata=metadata,
                timeout=5,
            ),
            "overlapping mask": update(["attributes.a", "attributes.a.b"], attributes_json='{"a": {"b": 1}}'),
            "whole and part": update(["attributes", "attributes.a"], attributes_json='{"a": 1}'),
            "deep mask path": update([".".join(["attributes", *["a"] * 5000])]),
            "part of a plain field": update(["handle.zzz"], handle="new_handle"),
            "negative page size": stub.ListProfiles(
                pb.ListProfilesRequest(page_size=-1), metadata=metadata, timeout=5
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
        # Bytes that are not a message of the method: refused like any bad input, not UNKNOWN.
        # No serializers: the request goes out as the bytes given.
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/keel.profiles.v1.ProfileService/GetProfile"
        )
        with pytest.raises(grpc.aio.AioRpcError) as garbled:
            await raw(b"\n\x02\xff\xfe", metadata=metadata, timeout=5)
        assert garbled.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_an_edge_passes_its_remaining_deadline_to_the_core(
    migrated_postgres_url: str, proxy: FaultProxy
) -> None:
    # The edge's own wait for the core (core_timeout_seconds, 2 s) is far longer than the
    # request's 0.3 s: only the request's remaining budget can make the core's deadline shorter.
    settings = Settings(
        database_url=through(migrated_postgres_url, proxy), db_timeout_seconds=5.0, cache_enabled=False
    )
    deployment = await deploy(settings, "edge")
    try:
        token = await _token(deployment.core, Scope.PROFILES_READ, Scope.PROFILES_WRITE)
        app = build_http_app(deployment.serving.settings, deployment.serving.metrics)
        app.state.services = deployment.serving
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            created = await client.post(
                "/v1/profiles",
                json={"handle": "ada_l", "emails": [{"address": "a@b.co", "primary": True}]},
                headers=headers,
            )
            assert created.status_code == 201
            proxy.set_faults(Faults(latency_ms=1500))
            with capture_logs() as logs:
                slow = await client.get(
                    f"/v1/profiles/{created.json()['id']}", headers={**headers, "X-Request-Timeout": "0.3"}
                )
                calls = await _core_logged(logs, "GetProfile")
        assert slow.status_code == 503
        assert slow.json()["type"] == "urn:keel:problem:deadline-exceeded"
        # What the core received is what the edge had left of the caller's 0.3 s: at most that
        # (the edge spent some of it), and something (it does not call with nothing left).
        for call in calls:
            assert 0 < call["deadline_ms"] <= 300, call
    finally:
        proxy.clear()
        await deployment.close()


async def test_an_edge_whose_core_is_gone_answers_503_never_500(sqlite_url: str) -> None:
    clock = SteppedClock()
    deployment = await deploy(Settings(database_url=sqlite_url), "edge", resilience_clock=clock)
    token = await _token(deployment.core, Scope.PROFILES_READ, Scope.PROFILES_WRITE)
    app = build_http_app(deployment.serving.settings, deployment.serving.metrics)
    app.state.services = deployment.serving
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            assert (await client.get("/v1/profiles", headers=headers)).status_code == 200
            assert deployment.grpc is not None
            clock.advance(1.0)  # the retry budget accrues a retry a second besides its ratio
            await deployment.grpc.stop(0)
            read = await client.get("/v1/profiles", headers=headers)
            write = await client.post(
                "/v1/profiles",
                json={"handle": "ada_l", "emails": [{"address": "a@b.co", "primary": True}]},
                headers=headers,
            )
            ready = await client.get("/readyz")
        # A read failed: 503, retry later. A write got no answer: it may have been made (504,
        # outcome-unknown), so the caller must not be told that nothing changed.
        assert (read.status_code, write.status_code, ready.status_code) == (503, 504, 503)
        assert read.headers["content-type"] == "application/problem+json"
        assert "retry-after" in read.headers
        assert write.json()["type"] == "urn:keel:problem:outcome-unknown"
        retried = deployment.serving.metrics.registry.get_sample_value(
            "keel_dependency_retries_total", {"dependency": "core", "outcome": "retried"}
        )
        assert retried is not None
        assert retried >= 1  # the read was retried, the write not
    finally:
        deployment.grpc = None
        await deployment.close()


async def test_an_edge_whose_own_key_is_refused_is_unavailable_not_its_callers_fault(sqlite_url: str) -> None:
    # No key cache at either end (a lifetime of 0): the revocation is seen on the next call.
    deployment = await deploy(Settings(database_url=sqlite_url, api_key_cache_seconds=0.0), "edge")
    core = deployment.core
    token = await _token(core, Scope.PROFILES_READ)
    app = build_http_app(deployment.serving.settings, deployment.serving.metrics)
    app.state.services = deployment.serving
    edge_key = deployment.serving.settings.core_api_key
    assert edge_key is not None
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            assert (await client.get("/readyz")).status_code == 200
            await revoke_api_key(
                core.local.store, core.local.clock, edge_key.get_secret_value().split("_")[1]
            )
            refused = await client.get("/v1/profiles", headers={"Authorization": f"Bearer {token}"})
            ready = await client.get("/readyz")
        # The caller's key is fine: not a 401 for them, but the service being unavailable.
        assert refused.status_code == 503
        assert refused.json()["type"] == "urn:keel:problem:edge-rejected"
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"core": "serving", "edge_key": "rejected"}
    finally:
        await deployment.close()
