"""The profile endpoints. Each handler: read the wire input, call one use case, map the result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated
from urllib.parse import urlencode

from cadwyn import VersionedAPIRouter
from fastapi import Header, Path, Query, Request
from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, Response

from keel.api.http.request_state import request_state
from keel.api.media_types import MERGE_PATCH_JSON as MERGE_PATCH
from keel.api.rest import end_user_routes, personal_data_routes
from keel.api.rest.dependencies import Caller, RestServices, ServicesDep, authenticated_caller
from keel.api.rest.documented_responses import NOT_MODIFIED, UPDATE_RECEIPT, problem_responses
from keel.api.rest.mapping import etag, profile_document
from keel.api.rest.operation_ids import operation_id
from keel.api.rest.profile_http import (
    CACHE_CONTROL,
    IF_NONE_MATCH,
    expected_version,
    merge_patch_body,
    read_answer,
)
from keel.api.rest.schemas import MERGE_PATCH_SCHEMA, HandleCheck, ProfileCreate, ProfileList, ProfileOut
from keel.api.rest.version_changes import ProfileDowngrade
from keel.domain.api_keys import Principal
from keel.domain.errors import FieldError, ValidationFailed
from keel.domain.profile import Profile
from keel.service.use_cases import (
    IDEMPOTENCY_KEY_RULE,
    ListFilters,
    answer_shows_profile,
    valid_idempotency_key,
)

# 1-100 comma-separated ids, none empty: stated in OpenAPI, so that the schema says what is valid.
_IDS_PATTERN = r"^\s*[^,\s][^,]*(,\s*[^,\s][^,]*){0,99}$"

# Documented, not enforced here: `valid_idempotency_key` checks it (the same rule as gRPC's
# request_id); HTTP trims a header's outer spaces, so the key neither starts nor ends with one.
_IDEMPOTENCY_KEY_SCHEMA = {
    "description": IDEMPOTENCY_KEY_RULE,
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
}

router = VersionedAPIRouter(prefix="/v1", tags=["profiles"], generate_unique_id_function=operation_id)


def _tag(profile: Profile, caller: Principal) -> str:
    """The answer's ETag: the profile's version, in the caller's view and the request's API version."""
    return etag(profile, full_view=caller.is_admin, api_version=request_state().api_version)


def _idempotency_key(value: str | None) -> str | None:
    if value is not None and not valid_idempotency_key(value):
        raise ValidationFailed([FieldError("/headers/Idempotency-Key", IDEMPOTENCY_KEY_RULE)])
    return value


@router.post(
    "/profiles",
    status_code=201,
    response_model=ProfileOut,
    # 404: a retry whose Idempotency-Key created a profile that has been erased since.
    responses=problem_responses(404, 409, 421, body=True),
    summary="Create a profile",
)
async def create_profile(
    body: ProfileCreate,
    caller: Caller,
    services: ServicesDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", json_schema_extra=_IDEMPOTENCY_KEY_SCHEMA)
    ] = None,
) -> Response:
    """Create a profile. With `Idempotency-Key`, retries of the same request return the first
    response (marked `Idempotent-Replayed: true`) instead of creating a duplicate."""
    created = await services.profiles.create_profile(
        caller,
        # Python mode, not JSON mode: JSON mode would quietly turn NaN into null, and the
        # service must see what the client sent to refuse it.
        body.model_dump(exclude_unset=True),
        idempotency_key=_idempotency_key(idempotency_key),
    )
    profile = created.profile
    headers = {"Location": f"/v1/profiles/{profile.id}", "ETag": _tag(profile, caller)}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(profile_document(profile), status_code=201, headers=headers)


@router.get(
    "/profiles/{profile_id}",
    response_model=ProfileOut,
    responses={**NOT_MODIFIED, **problem_responses(404, 421)},
    summary="Read a profile",
    openapi_extra={"parameters": [IF_NONE_MATCH]},
)
async def get_profile(profile_id: str, request: Request) -> Response:
    # A deliberately short signature (every parameter is work for FastAPI, and Cadwyn resolves
    # the signature twice). The newest version's reads skip FastAPI altogether and call
    # `profile_answer` from `keel.api.rest.hot_reads`; older versions come here.
    return await profile_answer(request, profile_id)


async def profile_answer(
    request: Request, profile_id: str, downgrades: Sequence[ProfileDowngrade] = ()
) -> Response:
    """The answer to `GET /v1/profiles/{profile_id}`, headers read straight from the request;
    `downgrades` turn the document into an older version's shape before it is encoded (the hot
    path's; through the framework, Cadwyn's migrations do it). Raises `KeelError`s for the
    problem handlers (or the hot path) to answer."""
    services: RestServices = request.app.state.services
    caller = await authenticated_caller(request)
    read = await services.profiles.read_profile(caller, profile_id)
    return read_answer(request, read, _tag(read.profile, caller), downgrades)


@router.patch(
    "/profiles/{profile_id}",
    response_model=ProfileOut,
    responses={**UPDATE_RECEIPT, **problem_responses(404, 409, 412, 421, body=True)},
    summary="Update a profile with a JSON merge patch (RFC 7396)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {MERGE_PATCH: {"schema": MERGE_PATCH_SCHEMA}},
        }
    },
)
async def update_profile(
    profile_id: str,
    request: Request,
    caller: Caller,
    services: ServicesDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    patch = await merge_patch_body(request)
    profile = await services.profiles.update_profile(
        caller, profile_id, patch, expected_version=expected_version(profile_id, if_match)
    )
    tag = _tag(profile, caller)
    if not answer_shows_profile(caller):
        # A key that may not read gets the write's receipt only: its entity tag (the version).
        return Response(status_code=204, headers={"ETag": tag})
    return JSONResponse(profile_document(profile), headers={"ETag": tag})


@router.delete(
    "/profiles/{profile_id}",
    status_code=204,
    responses=problem_responses(404, 409, 412, 421),
    summary="Delete a profile",
)
async def delete_profile(
    profile_id: str,
    caller: Caller,
    services: ServicesDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Soft delete: the profile is gone for every reader, its handle and emails are free again."""
    await services.profiles.delete_profile(
        caller, profile_id, expected_version=expected_version(profile_id, if_match)
    )
    return Response(status_code=204)


@router.get(
    "/profiles",
    response_model=ProfileList,
    responses=problem_responses(421),
    summary="List and search profiles",
)
async def list_profiles(
    request: Request,
    caller: Caller,
    services: ServicesDep,
    handle: Annotated[str | None, Query(max_length=64)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    ids: Annotated[
        str | None, Query(description="Comma-separated profile ids, at most 100", pattern=_IDS_PATTERN)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    id_list = tuple(part.strip() for part in ids.split(",") if part.strip()) if ids is not None else None
    page = await services.profiles.list_profiles(
        caller, ListFilters(handle=handle, email=email, ids=id_list), limit=limit, cursor=cursor
    )
    headers = {"Cache-Control": CACHE_CONTROL}
    next_page = None
    if page.next_cursor is not None:
        # The query as the client sent it (an older version's request migration may have added
        # a default to the parsed one), with the cursor of the next page.
        query = {k: v for k, v in QueryParams(request.scope["query_string"]).items() if k != "cursor"}
        query["cursor"] = page.next_cursor
        next_page = f"{request.url.path}?{urlencode(query)}"
        headers["Link"] = f'<{next_page}>; rel="next"'
    return JSONResponse(
        {"items": [profile_document(p) for p in page.profiles], "links": {"next": next_page}},
        headers=headers,
    )


@router.get(
    "/handles/{handle}",
    response_model=HandleCheck,
    responses=problem_responses(),
    summary="Whether a handle is free",
    tags=["handles"],
)
async def check_handle(
    caller: Caller, services: ServicesDep, handle: Annotated[str, Path(max_length=64)]
) -> Response:
    available = await services.profiles.handle_available(caller, handle)
    return JSONResponse({"handle": handle, "available": available}, headers={"Cache-Control": CACHE_CONTROL})


# Export and erasure, and end users' own profile: their own modules, served under the same versions.
personal_data_routes.add_routes(router)
end_user_routes.add_routes(router)
