"""`ApiKeyService` over real gRPC on loopback (a core on SQLite): the same use cases as REST's
`/v1/keys`, with gRPC's errors. An admin key creates, changes, rotates, expires and revokes a
key, and each change shows on the key's next call; any other key is refused with
PERMISSION_DENIED before its request is read; bad input is INVALID_ARGUMENT with the field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2

from keel.api.grpc.server import GrpcServer
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import build_services
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key

MISSING = "eu1_01M977N90FNC0XW4XT2ZE1XM79"


@pytest.fixture
async def core(sqlite_url: str) -> AsyncIterator[tuple[Services, GrpcServer]]:
    keel = await build_services(Settings(database_url=sqlite_url, ratelimit_enabled=False))
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


def _auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _code(call: Awaitable[object]) -> tuple[grpc.StatusCode, status_pb2.Status]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        details = status_pb2.Status()
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                details.ParseFromString(value)
        return error.code(), details
    return grpc.StatusCode.OK, status_pb2.Status()


def _fields(details: status_pb2.Status) -> list[str]:
    for packed in details.details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            return [v.field for v in bad.field_violations]
    return []


async def test_an_admin_manages_a_key_and_each_change_shows_on_its_next_call(
    core: tuple[Services, GrpcServer],
) -> None:
    keel, server = core
    admin = _auth(await _token(keel, Scope.ADMIN))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        keys = pb_grpc.ApiKeyServiceStub(channel)
        profiles = pb_grpc.ProfileServiceStub(channel)

        async def read_code(token: str) -> grpc.StatusCode:
            code, _ = await _code(
                profiles.GetProfile(pb.GetProfileRequest(id=MISSING), metadata=_auth(token))
            )
            return code

        created = await keys.CreateApiKey(
            pb.CreateApiKeyRequest(name="billing", scopes=["profiles:read"]), metadata=admin
        )
        key_id = created.api_key.id
        assert created.api_key.state == "active"
        assert created.token.startswith(f"keel_{key_id}_")
        assert await read_code(created.token) == grpc.StatusCode.NOT_FOUND  # accepted, and cached
        listed = await keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=admin)
        assert key_id in [k.id for k in listed.api_keys]

        await keys.UpdateApiKey(
            pb.UpdateApiKeyRequest(
                api_key=pb.ApiKey(id=key_id, scopes=["profiles:write"]),
                update_mask=FieldMask(paths=["scopes"]),
            ),
            metadata=admin,
        )
        assert await read_code(created.token) == grpc.StatusCode.PERMISSION_DENIED
        await keys.UpdateApiKey(
            pb.UpdateApiKeyRequest(
                api_key=pb.ApiKey(id=key_id, scopes=["profiles:read"]),
                update_mask=FieldMask(paths=["scopes"]),
            ),
            metadata=admin,
        )
        rotated = await keys.RotateApiKey(
            pb.RotateApiKeyRequest(id=key_id, previous_secret_valid_seconds=0), metadata=admin
        )
        assert await read_code(created.token) == grpc.StatusCode.UNAUTHENTICATED
        assert await read_code(rotated.token) == grpc.StatusCode.NOT_FOUND
        expired = await keys.ExpireApiKey(pb.ExpireApiKeyRequest(id=key_id), metadata=admin)
        assert expired.api_key.state == "expired"
        assert await read_code(rotated.token) == grpc.StatusCode.UNAUTHENTICATED

        other = await keys.CreateApiKey(
            pb.CreateApiKeyRequest(name="o", scopes=["profiles:read"]), metadata=admin
        )
        await keys.RevokeApiKey(pb.RevokeApiKeyRequest(id=other.api_key.id), metadata=admin)
        assert await read_code(other.token) == grpc.StatusCode.UNAUTHENTICATED
        got = await keys.GetApiKey(pb.GetApiKeyRequest(id=other.api_key.id), metadata=admin)
        assert got.api_key.state == "revoked"

        audit = await keys.ListAuditEntries(pb.ListAuditEntriesRequest(api_key_id=key_id), metadata=admin)
        assert [e.action for e in audit.entries] == [
            "key.expired",
            "key.rotated",
            "key.updated",
            "key.updated",
            "key.created",
        ]
        assert json.loads(audit.entries[-2].detail_json) == {"scopes": ["profiles:write"]}
        assert created.token not in str(audit)
        assert rotated.token not in str(audit)
        page = await keys.ListAuditEntries(pb.ListAuditEntriesRequest(page_size=2), metadata=admin)
        assert len(page.entries) == 2
        assert page.next_before == page.entries[-1].seq


async def test_any_other_key_is_refused_before_its_request_is_read(core: tuple[Services, GrpcServer]) -> None:
    keel, server = core
    writer = _auth(await _token(keel, Scope.PROFILES_READ, Scope.PROFILES_WRITE))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        keys = pb_grpc.ApiKeyServiceStub(channel)
        calls: list[Awaitable[object]] = [
            keys.CreateApiKey(pb.CreateApiKeyRequest(name="x", scopes=["admin"]), metadata=writer),
            keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=writer),
            keys.GetApiKey(pb.GetApiKeyRequest(id="aaaaaaaaaaaaaaaa"), metadata=writer),
            # A malformed mask: still PERMISSION_DENIED, not INVALID_ARGUMENT.
            keys.UpdateApiKey(
                pb.UpdateApiKeyRequest(update_mask=FieldMask(paths=["secret"])), metadata=writer
            ),
            keys.RotateApiKey(pb.RotateApiKeyRequest(id="aaaaaaaaaaaaaaaa"), metadata=writer),
            keys.RevokeApiKey(pb.RevokeApiKeyRequest(id="aaaaaaaaaaaaaaaa"), metadata=writer),
            keys.ListAuditEntries(pb.ListAuditEntriesRequest(), metadata=writer),
        ]
        for call in calls:
            code, _ = await _code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = await _code(keys.ListApiKeys(pb.ListApiKeysRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_input_is_invalid_argument_naming_this_services_field(
    core: tuple[Services, GrpcServer],
) -> None:
    keel, server = core
    admin = _auth(await _token(keel, Scope.ADMIN))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        keys = pb_grpc.ApiKeyServiceStub(channel)
        created = await keys.CreateApiKey(
            pb.CreateApiKeyRequest(name="k", scopes=["profiles:read"]), metadata=admin
        )
        past = pb.ExpireApiKeyRequest(id=created.api_key.id)
        past.expire_time.FromSeconds(1)  # 1970: not in the future
        cases: list[tuple[Awaitable[object], str]] = [
            (keys.ExpireApiKey(past, metadata=admin), "/expire_time"),
            (keys.ListAuditEntries(pb.ListAuditEntriesRequest(page_size=1000), metadata=admin), "/page_size"),
            (
                keys.ListAuditEntries(pb.ListAuditEntriesRequest(api_key_id="x" * 100), metadata=admin),
                "/api_key_id",
            ),
            (
                keys.UpdateApiKey(
                    pb.UpdateApiKeyRequest(
                        api_key=pb.ApiKey(id=created.api_key.id), update_mask=FieldMask(paths=["name"])
                    ),
                    metadata=admin,
                ),
                "/api_key/name",
            ),
            (keys.CreateApiKey(pb.CreateApiKeyRequest(name="e", scopes=["edge"]), metadata=admin), "/scopes"),
            (keys.CreateApiKey(pb.CreateApiKeyRequest(name="", scopes=["admin"]), metadata=admin), "/name"),
            (
                keys.CreateApiKey(
                    pb.CreateApiKeyRequest(name="p", scopes=["admin"], plan="gold"), metadata=admin
                ),
                "/plan",
            ),
            (
                keys.UpdateApiKey(
                    pb.UpdateApiKeyRequest(
                        api_key=pb.ApiKey(id=created.api_key.id), update_mask=FieldMask(paths=["token"])
                    ),
                    metadata=admin,
                ),
                "/update_mask",
            ),
            (
                keys.RotateApiKey(
                    pb.RotateApiKeyRequest(id=created.api_key.id, previous_secret_valid_seconds=-1),
                    metadata=admin,
                ),
                "/previous_secret_valid_seconds",
            ),
            (
                keys.RotateApiKey(
                    pb.RotateApiKeyRequest(id=created.api_key.id, previous_secret_valid_seconds=10**12),
                    metadata=admin,
                ),
                "/previous_secret_valid_seconds",
            ),
        ]
        for call, field in cases:
            code, details = await _code(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, field
            assert _fields(details) == [field]
        code, _ = await _code(keys.GetApiKey(pb.GetApiKeyRequest(id="aaaaaaaaaaaaaaaa"), metadata=admin))
        assert code == grpc.StatusCode.NOT_FOUND


async def test_a_malformed_id_names_no_key(core: tuple[Services, GrpcServer]) -> None:
    """Not looked up (a NUL byte is not even text PostgreSQL accepts): NOT_FOUND."""
    keel, server = core
    admin = _auth(await _token(keel, Scope.ADMIN))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        keys = pb_grpc.ApiKeyServiceStub(channel)
        for malformed in ("", "\x00" * 16, "A" * 16, "a" * 10_000):
            code, _ = await _code(keys.GetApiKey(pb.GetApiKeyRequest(id=malformed), metadata=admin))
            assert code == grpc.StatusCode.NOT_FOUND, malformed[:20]


async def test_a_rotated_out_admin_secret_is_refused_before_its_request_is_read(
    core: tuple[Services, GrpcServer],
) -> None:
    keel, server = core
    admin_token = await _token(keel, Scope.ADMIN)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        keys = pb_grpc.ApiKeyServiceStub(channel)
        own_id = admin_token.split("_")[1]
        await keys.RotateApiKey(
            pb.RotateApiKeyRequest(id=own_id, previous_secret_valid_seconds=3600), metadata=_auth(admin_token)
        )
        old = _auth(admin_token)  # still accepted for an hour, but manages nothing
        for call in (
            keys.UpdateApiKey(pb.UpdateApiKeyRequest(update_mask=FieldMask(paths=["secret"])), metadata=old),
            keys.RotateApiKey(
                pb.RotateApiKeyRequest(id=own_id, previous_secret_valid_seconds=-1), metadata=old
            ),
            keys.ListApiKeys(pb.ListApiKeysRequest(), metadata=old),
        ):
            code, _ = await _code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED
