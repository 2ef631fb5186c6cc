"""`ApiKeyService`: API keys managed by admin keys over gRPC, the same use cases as REST's
`/v1/keys` (`keel.service.api_key_admin`). Each method: read the message, call one use case, map
the result. A key that is not admin is refused (PERMISSION_DENIED) before anything is
looked up, and before the request's fields are read."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from grpc.aio import ServicerContext

from keel.api.grpc.server.admission import caller
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.domain.api_keys import ApiKey, AuditEntry, Principal
from keel.domain.errors import FieldError, NotFound, ValidationFailed
from keel.service.api_key_admin import ApiKeyAdmin, ensure_admin

Context = ServicerContext[object, object]
_UPDATABLE = ("name", "scopes", "plan")
_DEFAULT_AUDIT_PAGE = 100


class ApiKeyServicer(pb_grpc.ApiKeyServiceServicer):
    """`keys` None: this process administers no keys (it serves no database)."""

    def __init__(self, keys: ApiKeyAdmin | None) -> None:
        self._keys = keys

    def _admin(self) -> tuple[ApiKeyAdmin, Principal]:
        """The use cases and the caller, refused unless admin before anything else is read."""
        principal = caller()
        ensure_admin(principal)
        if self._keys is None:
            raise NotFound("API keys are administered on a core.")
        return self._keys, principal

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        keys, principal = self._admin()
        with _as_in_proto({"/expires_at": "/expire_time"}):
            issued = await keys.create(
                principal,
                name=request.name,
                scopes=list(request.scopes),
                plan=request.plan or None,
                api_version=request.api_version or None,
                expires_at=_time_or_none(request, "expire_time"),
            )
        return pb.CreateApiKeyResponse(api_key=api_key_message(issued.key, keys.now()), token=issued.token)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        keys, principal = self._admin()
        listed = await keys.list_keys(principal)
        now = keys.now()
        return pb.ListApiKeysResponse(api_keys=[api_key_message(k, now) for k in listed])

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Context) -> pb.GetApiKeyResponse:
        keys, principal = self._admin()
        return pb.GetApiKeyResponse(
            api_key=api_key_message(await keys.get_key(principal, request.id), keys.now())
        )

    async def UpdateApiKey(
        self, request: pb.UpdateApiKeyRequest, context: Context
    ) -> pb.UpdateApiKeyResponse:
        keys, principal = self._admin()
        paths = list(request.update_mask.paths)
        unknown = [p for p in paths if p not in _UPDATABLE]
        if unknown or not paths:
            raise ValidationFailed(
                [
                    FieldError(
                        "/update_mask",
                        f"paths among {', '.join(_UPDATABLE)}; not {', '.join(unknown) or 'none'}",
                    )
                ]
            )
        given = request.api_key
        with _as_in_proto({"/name": "/api_key/name", "/scopes": "/api_key/scopes", "/plan": "/api_key/plan"}):
            updated = await keys.update(
                principal,
                given.id,
                name=given.name if "name" in paths else None,
                scopes=list(given.scopes) if "scopes" in paths else None,
                plan=given.plan if "plan" in paths else None,
            )
        return pb.UpdateApiKeyResponse(api_key=api_key_message(updated, keys.now()))

    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: Context
    ) -> pb.RotateApiKeyResponse:
        keys, principal = self._admin()
        seconds = request.previous_secret_valid_seconds
        if seconds < 0:  # the use case checks the upper bound; a timedelta of -N is valid Python
            raise ValidationFailed([FieldError("/previous_secret_valid_seconds", "must be 0 or more")])
        issued = await keys.rotate(
            principal, request.id, previous_valid_for=timedelta(seconds=min(seconds, 10**9))
        )
        return pb.RotateApiKeyResponse(api_key=api_key_message(issued.key, keys.now()), token=issued.token)

    async def ExpireApiKey(
        self, request: pb.ExpireApiKeyRequest, context: Context
    ) -> pb.ExpireApiKeyResponse:
        keys, principal = self._admin()
        with _as_in_proto({"/at": "/expire_time"}):
            expired = await keys.expire(principal, request.id, at=_time_or_none(request, "expire_time"))
        return pb.ExpireApiKeyResponse(api_key=api_key_message(expired, keys.now()))

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        keys, principal = self._admin()
        await keys.revoke(principal, request.id)
        return pb.RevokeApiKeyResponse()

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: Context
    ) -> pb.ListAuditEntriesResponse:
        keys, principal = self._admin()
        limit = request.page_size or _DEFAULT_AUDIT_PAGE
        with _as_in_proto({"/limit": "/page_size", "/key_id": "/api_key_id"}):
            entries = await keys.audit(
                principal, limit=limit, before=request.before or None, key_id=request.api_key_id or None
            )
        next_before = entries[-1].seq if len(entries) == limit and entries[-1].seq is not None else 0
        return pb.ListAuditEntriesResponse(
            entries=[audit_message(e) for e in entries], next_before=next_before
        )


@contextlib.contextmanager
def _as_in_proto(renamed: dict[str, str]) -> Iterator[None]:
    """The use case's field errors under the names this service's messages give the fields
    (`/expires_at` is `/expire_time` here)."""
    try:
        yield
    except ValidationFailed as error:
        fields = [FieldError(renamed.get(e.field, e.field), e.message) for e in error.errors]
        raise ValidationFailed(fields, str(error)) from None


def api_key_message(key: ApiKey, now: datetime) -> pb.ApiKey:
    state = "revoked" if key.revoked_at is not None else "active" if key.usable_at(now) else "expired"
    message = pb.ApiKey(
        id=key.id,
        name=key.name,
        scopes=sorted(key.scopes),
        plan=key.plan,
        api_version=key.api_version,
        state=state,
    )
    message.create_time.FromDatetime(key.created_at)
    if key.expires_at is not None:
        message.expire_time.FromDatetime(key.expires_at)
    if key.revoked_at is not None:
        message.revoke_time.FromDatetime(key.revoked_at)
    if key.previous_usable_at(now) and key.previous_expires_at is not None:
        message.previous_secret_expire_time.FromDatetime(key.previous_expires_at)
    return message


def audit_message(entry: AuditEntry) -> pb.AuditEntry:
    message = pb.AuditEntry(
        seq=entry.seq or 0,
        actor=entry.actor,
        action=entry.action,
        api_key_id=entry.subject,
        detail_json=json.dumps(entry.detail, separators=(",", ":"), sort_keys=True),
    )
    message.time.FromDatetime(entry.at)
    return message


def _time_or_none(request: pb.CreateApiKeyRequest | pb.ExpireApiKeyRequest, field: str) -> datetime | None:
    if not request.HasField(field):  # type: ignore[arg-type]  # the two messages' own field names
        return None
    stamp: Timestamp = getattr(request, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ValidationFailed([FieldError(f"/{field}", "not a valid time")]) from None
