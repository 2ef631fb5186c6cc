"""API-key administration (admin keys only): create, list, read, change, rotate, expire and
revoke keys, and read the audit log of these actions. Each handler: read the wire input, call
one use case (`keel.service.api_key_admin`), map the result.

A key that is not admin is refused (403) before anything is looked up (a body that is not
JSON of the route's shape is refused first, with a 422 that says nothing about keys). On
an edge (no database of its own), keys are administered on its core: these paths answer 404
there. Secrets appear only in the answers that create them (`Cache-Control: no-store`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from cadwyn import VersionedAPIRouter
from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from keel.api.http.request_state import request_state
from keel.api.rest.dependencies import admin_caller, iso_time
from keel.api.rest.documented_responses import problem_responses
from keel.api.rest.operation_ids import operation_id
from keel.domain.api_keys import ApiKey, AuditEntry, Principal
from keel.domain.errors import NotFound
from keel.service.api_key_admin import (
    GRANTABLE_SCOPES,
    MAX_AUDIT_PAGE,
    MAX_NAME_LENGTH,
    MAX_PREVIOUS_SECRET_LIFETIME,
    ApiKeyAdmin,
)
from keel.service.auth import IssuedKey

router = VersionedAPIRouter(prefix="/v1", tags=["api keys"], generate_unique_id_function=operation_id)

ScopeName = Annotated[str, Field(max_length=50, json_schema_extra={"enum": sorted(GRANTABLE_SCOPES)})]
KeyState = Literal["active", "expired", "revoked"]
_NO_STORE = {"Cache-Control": "no-store"}


class ApiKeyServices(Protocol):
    @property
    def api_keys(self) -> ApiKeyAdmin | None: ...


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKeyCreate(_Input):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, examples=["billing-service"])
    scopes: list[ScopeName] = Field(
        min_length=1,
        max_length=len(GRANTABLE_SCOPES),
        description="`edge` cannot be given here (an edge key may act as any caller): use the CLI.",
    )
    plan: str | None = Field(
        default=None, max_length=100, description="A configured rate-limit plan; absent: the default plan."
    )
    api_version: str | None = Field(
        default=None,
        max_length=20,
        description="The REST API version pinned on the key; absent: the version of this request.",
    )
    expires_at: datetime | None = Field(
        default=None,
        description="When the key stops working by itself (with a time zone offset); absent: never.",
    )


class ApiKeyUpdate(_Input):
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    scopes: list[ScopeName] | None = Field(default=None, min_length=1, max_length=len(GRANTABLE_SCOPES))
    plan: str | None = Field(default=None, max_length=100)


class ApiKeyRotate(_Input):
    previous_secret_valid_seconds: int = Field(
        ge=0,
        le=int(MAX_PREVIOUS_SECRET_LIFETIME.total_seconds()),
        description="How long the secret being replaced stays accepted (0: not at all), so that its "
        "users can move to the new one. A secret an earlier rotation left accepted stops at once.",
    )


class ApiKeyExpire(_Input):
    at: datetime | None = Field(
        default=None, description="When the key stops working (with a time zone offset); absent: now."
    )


class ApiKeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    plan: str
    api_version: str
    state: KeyState
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        description="Until when the secret a rotation replaced is still accepted; null: it is not."
    )


class ApiKeyIssued(ApiKeyOut):
    token: str = Field(description="`keel_…`: the bearer token. Shown once, in this answer only.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class AuditEntryOut(BaseModel):
    seq: int
    at: datetime
    actor: str = Field(description="The id of the admin key that acted.")
    action: str = Field(
        description="key.created, key.updated, key.rotated, key.expired or key.revoked; or"
        " profile.end_user_linked or profile.end_user_unlinked, whose `key_id` is then the profile's id"
    )
    key_id: str = Field(description="The key acted on (the profile, for a profile.* action).")
    detail: dict[str, Any] = Field(description="What changed; never a secret.")


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null: no more.")


async def api_key_admin(request: Request) -> ApiKeyAdmin:
    services: ApiKeyServices = request.app.state.services
    admin = services.api_keys
    if admin is None:
        raise NotFound("API keys are administered on a core, not on an edge.")
    return admin


Admin = Annotated[Principal, Depends(admin_caller("manage API keys"))]
Keys = Annotated[ApiKeyAdmin, Depends(api_key_admin)]


def key_document(key: ApiKey, now: datetime) -> dict[str, Any]:
    state: KeyState = (
        "revoked" if key.revoked_at is not None else "active" if key.usable_at(now) else "expired"
    )
    return {
        "id": key.id,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "plan": key.plan,
        "api_version": key.api_version,
        "state": state,
        "created_at": iso_time(key.created_at),
        "expires_at": iso_time(key.expires_at),
        "revoked_at": iso_time(key.revoked_at),
        "previous_secret_expires_at": iso_time(
            key.previous_expires_at if key.previous_usable_at(now) else None
        ),
    }


def _issued(issued: IssuedKey, now: datetime, status: int, headers: dict[str, str]) -> Response:
    document = key_document(issued.key, now) | {"token": issued.token}
    return JSONResponse(document, status_code=status, headers={**headers, **_NO_STORE})


@router.post(
    "/keys",
    status_code=201,
    response_model=ApiKeyIssued,
    responses=problem_responses(body=True),
    summary="Create an API key; its token is shown once (admin)",
)
async def create_api_key(caller: Admin, keys: Keys, body: ApiKeyCreate) -> Response:
    issued = await keys.create(
        caller,
        name=body.name,
        scopes=body.scopes,
        plan=body.plan,
        # Absent: the version this request is made in, so that a client pinned to a version
        # creates keys that answer it as it is answered.
        api_version=body.api_version if body.api_version is not None else request_state().api_version,
        expires_at=body.expires_at,
    )
    return _issued(issued, keys.now(), 201, {"Location": f"/v1/keys/{issued.key.id}"})


@router.get(
    "/keys",
    response_model=ApiKeyList,
    responses=problem_responses(),
    summary="List API keys, revoked and expired ones included, oldest first (admin)",
)
async def list_api_keys(caller: Admin, keys: Keys) -> Response:
    listed = await keys.list_keys(caller)
    now = keys.now()
    return JSONResponse({"items": [key_document(k, now) for k in listed]})


@router.get(
    "/keys/{key_id}",
    response_model=ApiKeyOut,
    responses=problem_responses(404),
    summary="Read an API key (admin)",
)
async def get_api_key(key_id: str, caller: Admin, keys: Keys) -> Response:
    return JSONResponse(key_document(await keys.get_key(caller, key_id), keys.now()))


@router.patch(
    "/keys/{key_id}",
    response_model=ApiKeyOut,
    responses=problem_responses(404, body=True),
    summary="Change an API key's name, scopes or plan (admin; not an edge key's)",
)
async def update_api_key(key_id: str, caller: Admin, keys: Keys, body: ApiKeyUpdate) -> Response:
    updated = await keys.update(caller, key_id, name=body.name, scopes=body.scopes, plan=body.plan)
    return JSONResponse(key_document(updated, keys.now()))


@router.post(
    "/keys/{key_id}/rotate",
    response_model=ApiKeyIssued,
    responses=problem_responses(404, body=True),
    summary="Give an API key a new secret, the old one accepted for a while; the token is shown once (admin)",
)
async def rotate_api_key(key_id: str, caller: Admin, keys: Keys, body: ApiKeyRotate) -> Response:
    issued = await keys.rotate(
        caller, key_id, previous_valid_for=timedelta(seconds=body.previous_secret_valid_seconds)
    )
    return _issued(issued, keys.now(), 200, {})


@router.post(
    "/keys/{key_id}/expire",
    response_model=ApiKeyOut,
    responses=problem_responses(404, body=True),
    summary="End an API key now or at a time (admin)",
)
async def expire_api_key(
    key_id: str, caller: Admin, keys: Keys, body: ApiKeyExpire | None = None
) -> Response:
    expired = await keys.expire(caller, key_id, at=body.at if body is not None else None)
    return JSONResponse(key_document(expired, keys.now()))


@router.delete(
    "/keys/{key_id}",
    status_code=204,
    responses=problem_responses(404),
    summary="Revoke an API key (admin)",
)
async def revoke_api_key(key_id: str, caller: Admin, keys: Keys) -> Response:
    await keys.revoke(caller, key_id)
    return Response(status_code=204)


def audit_document(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": iso_time(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "key_id": entry.subject,
        "detail": entry.detail,
    }


@router.get(
    "/audit",
    response_model=AuditPage,
    responses=problem_responses(),
    summary="The audit log of API-key administration, newest first (admin)",
)
async def list_audit_entries(
    caller: Admin,
    keys: Keys,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
    before: Annotated[int | None, Query(ge=1, description="`next_before` of the previous page.")] = None,
    key_id: Annotated[str | None, Query(max_length=64, description="Only this key's entries.")] = None,
) -> Response:
    entries = await keys.audit(caller, limit=limit, before=before, key_id=key_id)
    next_before = entries[-1].seq if len(entries) == limit else None
    return JSONResponse({"items": [audit_document(e) for e in entries], "next_before": next_before})
