"""End users' own profile (`/v1/me`, with an access token of the configured OpenID Connect
issuer), and the admin routes that link a profile to its end user. Each handler: call one use
case, map the result (docs/end-users.md)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import JSONResponse, Response

from keel.api.http.request_state import request_state
from keel.api.media_types import MERGE_PATCH_JSON as MERGE_PATCH
from keel.api.rest.dependencies import Caller, ServicesDep, admin_caller, iso_time
from keel.api.rest.documented_responses import NOT_MODIFIED, problem_responses
from keel.api.rest.mapping import etag, profile_document
from keel.api.rest.profile_http import IF_NONE_MATCH, expected_version, merge_patch_body, read_answer
from keel.api.rest.schemas import MERGE_PATCH_SCHEMA, EndUserLink, EndUserLinkIn, ProfileOut
from keel.domain.api_keys import Principal
from keel.domain.end_users import SubjectLink
from keel.domain.errors import NotFound
from keel.domain.profile import Profile
from keel.service.end_users import NOT_SET_UP
from keel.service.use_cases import EndUserUseCases

_NO_STORE = {"Cache-Control": "no-store"}
_LINKER = Annotated[Principal, Depends(admin_caller("link profiles to end users"))]


def _end_users(services: ServicesDep) -> EndUserUseCases:
    end_users = services.end_users
    if end_users is None:
        raise NotFound(NOT_SET_UP)
    return end_users


def _tag(profile: Profile) -> str:
    return etag(profile, full_view=False, own_view=True, api_version=request_state().api_version)


async def get_me(request: Request, caller: Caller, services: ServicesDep) -> Response:
    """The caller's own profile, as an end user sees it: every field but the attributes the
    schema does not show end users. For end users only (an access token, not an API key)."""
    read = await _end_users(services).me(caller)
    return read_answer(request, read, _tag(read.profile))


async def update_me(
    request: Request,
    caller: Caller,
    services: ServicesDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Change the caller's own profile with a JSON merge patch (RFC 7396), within the fields an
    end user may change; a patch touching any other is refused whole (403, naming them)."""
    patch = await merge_patch_body(request)
    profile = await _end_users(services).update_me(
        caller,
        patch,
        expected_version_of=(
            (lambda profile_id: expected_version(profile_id, if_match)) if if_match is not None else None
        ),
    )
    return JSONResponse(profile_document(profile), headers={"ETag": _tag(profile)})


def _link_document(link: SubjectLink) -> dict[str, object]:
    return {
        "profile_id": link.profile_id,
        "issuer": link.end_user.issuer,
        "subject": link.end_user.subject,
        "linked_at": iso_time(link.linked_at),
    }


async def link_end_user(
    profile_id: str, body: EndUserLinkIn, caller: _LINKER, services: ServicesDep
) -> Response:
    """Link the profile to an end user (the issuer's `sub`), in place of any end user it had.
    The end user then reads and changes it through `/v1/me`. Recorded in the admin audit log."""
    link = await _end_users(services).link(caller, profile_id, body.subject)
    return JSONResponse(_link_document(link), headers=_NO_STORE)


async def get_end_user(profile_id: str, caller: _LINKER, services: ServicesDep) -> Response:
    link = await _end_users(services).linked_subject(caller, profile_id)
    return JSONResponse(_link_document(link), headers=_NO_STORE)


async def unlink_end_user(profile_id: str, caller: _LINKER, services: ServicesDep) -> Response:
    """The end user no longer reaches the profile (their next request is refused)."""
    await _end_users(services).unlink(caller, profile_id)
    return Response(status_code=204)


def add_routes(router: APIRouter) -> None:
    """Add these routes to the versioned router of `keel.api.rest.routes` (its `/v1` prefix
    applies), so they are served and documented under every version like the profile routes."""
    mine: list[str | Enum] = ["end users"]
    router.add_api_route(
        "/me",
        get_me,
        methods=["GET"],
        response_model=ProfileOut,
        responses={**NOT_MODIFIED, **problem_responses(404)},
        summary="Read your own profile (end users)",
        tags=mine,
        openapi_extra={"parameters": [IF_NONE_MATCH]},
    )
    router.add_api_route(
        "/me",
        update_me,
        methods=["PATCH"],
        response_model=ProfileOut,
        responses=problem_responses(404, 409, 412, body=True),
        summary="Change your own profile with a JSON merge patch (end users)",
        tags=mine,
        openapi_extra={
            "requestBody": {"required": True, "content": {MERGE_PATCH: {"schema": MERGE_PATCH_SCHEMA}}}
        },
    )
    admin: list[str | Enum] = ["end users"]
    router.add_api_route(
        "/profiles/{profile_id}/end-user",
        link_end_user,
        methods=["PUT"],
        response_model=EndUserLink,
        responses=problem_responses(404, 409, 421, body=True),
        summary="Link a profile to its end user (admin)",
        tags=admin,
    )
    router.add_api_route(
        "/profiles/{profile_id}/end-user",
        get_end_user,
        methods=["GET"],
        response_model=EndUserLink,
        responses=problem_responses(404),
        summary="The end user linked to a profile (admin)",
        tags=admin,
    )
    router.add_api_route(
        "/profiles/{profile_id}/end-user",
        unlink_end_user,
        methods=["DELETE"],
        status_code=204,
        responses=problem_responses(404),
        summary="Unlink a profile from its end user (admin)",
        tags=admin,
    )
