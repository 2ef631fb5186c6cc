"""What the REST operations on one profile share: its entity tags' preconditions, its cache
headers, and the strict reading of a merge patch."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastapi import Request
from fastapi.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from keel.api.http.conditional import etag_matches
from keel.api.media_types import MERGE_PATCH_JSON as MERGE_PATCH
from keel.api.media_types import accepts, refusal_detail
from keel.api.rest.api_versions import SUPPORTED_VERSIONS
from keel.api.rest.mapping import FIRST_API_VERSION, profile_document, version_from_etag
from keel.api.rest.version_changes import ProfileDowngrade
from keel.domain.errors import FieldError, ValidationFailed, VersionMismatch
from keel.domain.profile import JSONValue
from keel.service.profile_input import MAX_NESTING, nested_deeper_than, shape_errors
from keel.service.profile_reads import ProfileRead
from keel.service.strict_json import MalformedJSON, loads_strict

# The API versions whose entity tags name them (all but the first).
TAGGED_VERSIONS = SUPPORTED_VERSIONS - {FIRST_API_VERSION}

# Revalidate every time (cheap with If-None-Match), never share between callers.
CACHE_CONTROL = "private, no-cache"

IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "An ETag from an earlier answer: 304 Not Modified if the profile is unchanged.",
}


def expected_version(profile_id: str, if_match: str | None) -> frozenset[int] | None:
    """The versions an If-Match accepts (any of its entity tags may match), None for `*`."""
    if if_match is None or if_match.strip() == "*":
        return None
    versions = frozenset(
        version
        for candidate in if_match.split(",")
        if (version := version_from_etag(profile_id, candidate, TAGGED_VERSIONS)) is not None
    )
    if not versions:
        raise VersionMismatch("If-Match names no version of this profile.", current_version=None)
    return versions


def stale_headers(read: ProfileRead) -> dict[str, str]:
    """A copy served because the database is unavailable says so: its `Age` (RFC 9111) and a
    `Cache-Status` (RFC 9211) whose negative `ttl` is how long it has been past fresh."""
    past_fresh = max(1, math.ceil(read.seconds_past_fresh))
    return {
        "Age": str(math.ceil(read.age_seconds)),
        "Cache-Status": f'keel; hit; ttl=-{past_fresh}; detail="stale-if-error"',
    }


async def merge_patch_body(request: Request) -> dict[str, JSONValue]:
    """The request's merge patch, read strictly and checked for shape before any precondition:
    a patch that could never apply is a 422 whatever If-Match says (the use cases refuse it the
    same way, with the same errors)."""
    # `StrictBodies` refused other media types and malformed JSON already; checked again so that
    # the route stands on its own (the parse is the same strict one).
    if not accepts(request.headers.get("content-type"), MERGE_PATCH):
        raise HTTPException(415, refusal_detail(MERGE_PATCH))
    try:
        patch = loads_strict(await request.body())
    except MalformedJSON as error:
        raise HTTPException(400, error.detail) from None
    if nested_deeper_than(patch, MAX_NESTING):
        raise HTTPException(400, f"The body is nested deeper than {MAX_NESTING} levels.")
    if not isinstance(patch, dict):
        raise ValidationFailed([FieldError("", "a merge patch must be a JSON object")])
    shape = shape_errors(patch)
    if shape:
        raise ValidationFailed(shape)
    return patch


def read_answer(
    request: Request, read: ProfileRead, tag: str, downgrades: Sequence[ProfileDowngrade] = ()
) -> Response:
    """The answer to a read of one profile whose entity tag is `tag`: 304 when `If-None-Match`
    names it, else the document (turned into an older version's shape by `downgrades`); a stale
    copy says so (`stale_headers`)."""
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if read.stale:
        headers.update(stale_headers(read))
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    document = profile_document(read.profile)
    for downgrade in downgrades:
        downgrade(document)
    return JSONResponse(document, headers=headers)
