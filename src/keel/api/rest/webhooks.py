"""The webhook administration endpoints (admin keys only): register, list, read and delete
endpoints, list an endpoint's dead letters and replay them. Each handler: read the wire input,
call one use case, map the result.

A key that is not admin is refused (403) before its body is read or anything is looked up, so
it learns nothing, not even whether an endpoint exists. On an edge (no database of its own),
webhooks are administered on its core: these paths answer 404 there."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Protocol

from cadwyn import VersionedAPIRouter
from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from keel.api.rest.dependencies import admin_caller, iso_time
from keel.api.rest.documented_responses import problem_responses
from keel.api.rest.operation_ids import operation_id
from keel.domain.api_keys import Principal
from keel.domain.errors import NotFound
from keel.domain.events import EVENT_TYPES
from keel.domain.webhooks import WebhookDelivery, WebhookEndpoint
from keel.service.webhooks import MAX_LISTED, WebhookAdmin

router = VersionedAPIRouter(prefix="/v1", tags=["webhooks"], generate_unique_id_function=operation_id)

# Stated in OpenAPI; checked by the use case (the same rule for every protocol).
EventType = Annotated[str, Field(max_length=100, json_schema_extra={"enum": list(EVENT_TYPES)})]
_URL_RULES: dict[str, Any] = {"pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@\[\]]+([/?][^\s#]*)?$"}


class WebhookServices(Protocol):
    @property
    def webhooks(self) -> WebhookAdmin | None: ...


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCreate(_Input):
    url: str = Field(
        max_length=2048,
        examples=["https://hooks.example.com/keel"],
        description="http(s) URL on a public address (loopback and private addresses are refused "
        "unless the operator allows them).",
        json_schema_extra=_URL_RULES,
    )
    event_types: list[EventType] = Field(
        default_factory=list,
        max_length=len(EVENT_TYPES),
        description="The event types delivered; empty or absent: every type.",
        json_schema_extra={"uniqueItems": True},
    )
    holds_personal_data: bool = Field(
        default=False,
        description="This consumer stores personal data: erasures wait for its acknowledgement (2xx) "
        "of `keel.profile.erased.v1`.",
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    holds_personal_data: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="`whsec_…`: the Standard Webhooks signing secret. Shown once, in this answer only."
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeadLetterOut(BaseModel):
    id: str
    event_id: str = Field(description="Also the deliveries' `webhook-id`.")
    event_type: str
    subject: str
    attempts: int
    created_at: datetime
    last_attempt_at: datetime | None
    last_status: int | None = Field(description="The endpoint's last HTTP status; null when it gave none.")
    last_error: str | None = Field(
        description="status, timeout, connection, refused_address or secret_unreadable"
    )
    dead_at: datetime | None


class DeadLetterList(BaseModel):
    items: list[DeadLetterOut]


class ReplayRequest(_Input):
    ids: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=MAX_LISTED,
        description="The dead letters to replay; absent: all of the endpoint's.",
    )


class ReplayOut(BaseModel):
    replayed: int = Field(description="How many dead letters are pending again (with a fresh schedule).")


async def webhook_admin(request: Request) -> WebhookAdmin:
    services: WebhookServices = request.app.state.services
    admin = services.webhooks
    if admin is None:
        raise NotFound("Webhooks are administered on a core, not on an edge.")
    return admin


Admin = Annotated[Principal, Depends(admin_caller("manage webhooks"))]
Webhooks = Annotated[WebhookAdmin, Depends(webhook_admin)]


def endpoint_document(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "holds_personal_data": endpoint.holds_personal_data,
        "created_at": iso_time(endpoint.created_at),
    }


def dead_letter_document(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "subject": delivery.subject,
        "attempts": delivery.attempts,
        "created_at": iso_time(delivery.created_at),
        "last_attempt_at": iso_time(delivery.last_attempt_at),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "dead_at": iso_time(delivery.finished_at),
    }


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    responses=problem_responses(body=True),
    summary="Register a webhook endpoint (admin)",
)
async def create_webhook(caller: Admin, webhooks: Webhooks, body: WebhookCreate) -> Response:
    registered = await webhooks.register(caller, body.url, body.event_types, body.holds_personal_data)
    document = endpoint_document(registered.endpoint) | {"secret": registered.secret}
    headers = {"Location": f"/v1/webhooks/{registered.endpoint.id}", "Cache-Control": "no-store"}
    return JSONResponse(document, status_code=201, headers=headers)


@router.get(
    "/webhooks",
    response_model=WebhookList,
    responses=problem_responses(),
    summary="List webhook endpoints (admin)",
)
async def list_webhooks(caller: Admin, webhooks: Webhooks) -> Response:
    endpoints = await webhooks.list_endpoints(caller)
    return JSONResponse({"items": [endpoint_document(e) for e in endpoints]})


@router.get(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses=problem_responses(404),
    summary="Read a webhook endpoint (admin)",
)
async def get_webhook(webhook_id: str, caller: Admin, webhooks: Webhooks) -> Response:
    return JSONResponse(endpoint_document(await webhooks.get_endpoint(caller, webhook_id)))


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    responses=problem_responses(404),
    summary="Delete a webhook endpoint with its pending deliveries and dead letters (admin)",
)
async def delete_webhook(webhook_id: str, caller: Admin, webhooks: Webhooks) -> Response:
    await webhooks.delete_endpoint(caller, webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/dead-letters",
    response_model=DeadLetterList,
    responses=problem_responses(404),
    summary="List an endpoint's dead letters, oldest first (admin)",
)
async def list_dead_letters(
    webhook_id: str,
    caller: Admin,
    webhooks: Webhooks,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 100,
) -> Response:
    dead = await webhooks.dead_letters(caller, webhook_id, limit)
    return JSONResponse({"items": [dead_letter_document(d) for d in dead]})


@router.post(
    "/webhooks/{webhook_id}/dead-letters/replay",
    response_model=ReplayOut,
    responses=problem_responses(404, body=True),
    summary="Deliver dead letters again, with a fresh retry schedule (admin)",
)
async def replay_dead_letters(
    webhook_id: str, caller: Admin, webhooks: Webhooks, body: ReplayRequest | None = None
) -> Response:
    ids = body.ids if body is not None else None
    return JSONResponse({"replayed": await webhooks.replay(caller, webhook_id, ids)})
