"""RFC 9457 problem details: every error the REST API returns goes through here.

Each error kind has a stable `type` URI. Nothing here ever includes a stack trace, SQL or the
text of an unexpected exception.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from keel.domain.errors import (
    CapacityReduced,
    ConcurrentModification,
    Conflict,
    FieldError,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KeelError,
    Misdirected,
    NotFound,
    OutcomeUnknown,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
)
from keel.observability.context import current_request_id

PROBLEM_JSON = "application/problem+json"

# Status and title per domain error kind.
_KINDS: dict[type[KeelError], tuple[int, str]] = {
    ValidationFailed: (422, "Validation failed"),
    NotFound: (404, "Not found"),
    Conflict: (409, "Conflict"),
    VersionMismatch: (412, "Precondition failed"),
    IdempotencyKeyReused: (422, "Idempotency key reused"),
    IdempotencyInProgress: (409, "Request in progress"),
    ConcurrentModification: (409, "Concurrent modification"),
    Unauthenticated: (401, "Unauthenticated"),
    Forbidden: (403, "Forbidden"),
    Unavailable: (503, "Service unavailable"),
    CapacityReduced: (503, "Temporarily reduced capacity"),
    OutcomeUnknown: (504, "Outcome unknown"),
    QuotaExceeded: (429, "Quota exceeded"),
    Misdirected: (421, "Misdirected request"),
}
# Starlette-level errors (routing, methods) that are not domain errors.
_HTTP_CODES = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def problem_type(code: str) -> str:
    return f"urn:keel:problem:{code}"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": current_request_id(),
    }
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    if extensions:
        body.update(extensions)
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _kind(error: KeelError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        kind = _KINDS.get(cls)
        if kind is not None:
            return kind
    return 400, "Bad request"


def domain_problem(error: KeelError, instance: str | None = None) -> Response:
    status, title = _kind(error)
    # Conditions that pass by themselves: say when to try again.
    headers: dict[str, str] | None = None
    if isinstance(error, Unavailable | QuotaExceeded):
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    elif isinstance(error, IdempotencyInProgress | ConcurrentModification):
        headers = {"Retry-After": "1"}
    if isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="keel"'}
    errors = error.errors if isinstance(error, ValidationFailed) else None
    if isinstance(error, Conflict):
        errors = [FieldError(error.field, error.detail)]
    extensions: dict[str, Any] | None = None
    if isinstance(error, QuotaExceeded):
        extensions = {"violated_policies": list(error.violated_policies)}
    elif isinstance(error, Misdirected):
        extensions = {"home_region": error.home_region}
    return problem_response(
        status,
        error.code,
        title,
        error.detail,
        errors=errors,
        headers=headers,
        instance=instance,
        extensions=extensions,
    )


def _pointer(location: tuple[int | str, ...]) -> str:
    # ("body", "emails", 0, "address") -> "/emails/0/address"; header and query keep their kind.
    parts = list(location)
    if parts and parts[0] == "body":
        parts = parts[1:]
    return "".join(f"/{part}" for part in parts)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Starlette's 405 names only the
    methods of the first route whose path matched, but a path's methods are spread over one
    route per method (GET, PATCH and DELETE of a profile), and `Allow` must list them all."""
    methods: set[str] = set()
    for route in request.app.routes:
        route_methods = getattr(route, "methods", None)
        if isinstance(route, BaseRoute) and route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods.update(route_methods)
    return sorted(methods)


def install_problem_handlers(app: FastAPI) -> None:
    """Handlers for expected errors. Unexpected ones are logged and answered 500 by
    `RequestEnvelope`, the outermost layer, so that nothing escapes as a bare 500."""

    async def on_domain_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, KeelError)
        return domain_problem(error, request.url.path)

    async def on_validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        field_errors = [
            FieldError(_pointer(tuple(item.get("loc", ()))), str(item.get("msg", "invalid")))
            for item in error.errors()
        ]
        return domain_problem(ValidationFailed(field_errors), request.url.path)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        code = _HTTP_CODES.get(error.status_code, "http-error")
        detail = error.detail if isinstance(error.detail, str) else "The request could not be served."
        headers = dict(error.headers) if error.headers else None
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem_response(
            error.status_code,
            code,
            code.replace("-", " ").capitalize(),
            detail,
            headers=headers,
            instance=request.url.path,
        )

    app.add_exception_handler(KeelError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
