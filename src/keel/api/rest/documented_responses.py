"""The answers each `/v1/` operation may give besides its success, as OpenAPI documents them.

Every status a route can return is listed with its problem type (RFC 9457,
`application/problem+json`, the `Problem` model) so that clients, generated SDKs and the
contract tests (schemathesis, over every published version) know them: the ones every
operation can give (an unknown `Keel-Version` or bad `X-Request-Timeout` is a 400; 401, 403;
431 for oversized headers; 429 and 503 with the headers that say when to come back; 504 when an
edge cannot tell whether its core applied a write), and each operation's own.
"""

from __future__ import annotations

from typing import Any

from keel.api.rest.schemas import Problem

PROBLEM_JSON = "application/problem+json"

_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer", "minimum": 1},
}
_RATE_LIMIT_HEADERS = {
    "Retry-After": _RETRY_AFTER,
    "RateLimit": {
        "description": "The quota left under the policy nearest its limit "
        '(IETF draft-ietf-httpapi-ratelimit-headers), e.g. `"burst";r=0;t=3`.',
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": "The policies of the caller's plan, each as its burst (`q`, in cost units) "
        'per the seconds to refill it (`w`), e.g. `"burst";q=200;w=2;qu="keel-cost"`.',
        "schema": {"type": "string"},
    },
}

_DESCRIPTIONS: dict[int, tuple[str, str]] = {
    # status: (problem types, when)
    400: (
        "bad-request, unknown-api-version",
        "The body is not JSON this API reads (syntax, duplicate keys, not UTF-8), or the "
        "`Keel-Version` or `X-Request-Timeout` header is not valid.",
    ),
    401: ("unauthenticated", "No API key, or an unknown or revoked one."),
    403: ("forbidden", "The API key lacks the scope this operation needs."),
    404: ("not-found", "No such profile (or it was deleted)."),
    408: ("request-timeout", "The body did not arrive in time."),
    409: (
        "conflict, idempotency-in-progress, concurrent-modification",
        "A handle or email is taken, a request with the same Idempotency-Key is still running, "
        "or concurrent writers kept changing the profile.",
    ),
    412: ("version-mismatch", "`If-Match` names no current version of the profile."),
    413: ("payload-too-large", "The body is larger than the configured limit."),
    415: (
        "unsupported-media-type",
        "The body's `Content-Type` is not the operation's media type (optionally with charset=utf-8).",
    ),
    421: (
        "misdirected",
        "The profile's id, or the create's `region`, names another region than this service's: "
        "send the request to the region named in `home_region` (docs/residency.md).",
    ),
    422: ("validation, idempotency-key-reused", "The request is well-formed but not valid: see `errors`."),
    429: ("quota-exceeded", "The caller is over its rate limit."),
    414: ("uri-too-long", "The request line is longer than the header limit."),
    431: ("request-header-fields-too-large", "The request's headers are too large."),
    503: (
        "temporary-reduced-capacity, unavailable",
        "The service is shedding load or a dependency is unavailable.",
    ),
    504: ("outcome-unknown", "The core did not answer in time; a write may or may not have been applied."),
}
# 408 and 413: any request may carry a body (a GET's too), which must arrive in time and fit.
_EVERY_OPERATION = (400, 401, 403, 408, 413, 414, 422, 429, 431, 503, 504)
_WITH_BODY = (415,)
# What a route without key, version or input can still be answered: a bad `X-Request-Timeout`,
# a body that is late or too large, oversized request line or headers, admission and shedding.
_KEYLESS = (400, 408, 413, 414, 429, 431, 503)


def _problem(status: int) -> dict[str, Any]:
    types, when = _DESCRIPTIONS[status]
    response: dict[str, Any] = {
        "model": Problem,
        "content": {PROBLEM_JSON: {}},
        "description": f"{when} Problem type(s): {types}.",
    }
    if status == 429:
        response["headers"] = _RATE_LIMIT_HEADERS
    elif status == 503:
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response


def problem_responses(*statuses: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its own `statuses`, those of every operation, and with
    `body` those of reading a request body."""
    every = sorted({*statuses, *_EVERY_OPERATION, *(_WITH_BODY if body else ())})
    return {status: _problem(status) for status in every}


def keyless_problem_responses() -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a `/v1/` route that needs no key and takes no version, input or
    body (`GET /v1/versions`): what the request pipeline in front of every route can answer."""
    return {status: _problem(status) for status in _KEYLESS}


# The answer to an update by a key without `profiles:read` (see `answer_shows_profile`).
UPDATE_RECEIPT: dict[int | str, dict[str, Any]] = {
    204: {
        "description": "Applied, answered to a key without `profiles:read`: no body, only the new "
        "entity tag (a write-only key must not read a profile by changing it).",
        "headers": {"ETag": {"description": "The new entity tag.", "schema": {"type": "string"}}},
    }
}

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {
        "description": "The profile is unchanged since the `If-None-Match` tag: no body.",
        "headers": {"ETag": {"description": "The current entity tag.", "schema": {"type": "string"}}},
    }
}


def document_problem_media_type(schema: dict[str, Any]) -> None:
    """FastAPI documents a response `model` under `application/json` even when the response's
    content names another media type; problems are `application/problem+json` only."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_JSON in content and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
