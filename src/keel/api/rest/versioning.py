"""Choosing the API version of a request: the `Keel-Version` header, else the version pinned on
the caller's API key, else the newest.

Cadwyn's own picker is a BaseHTTPMiddleware (an extra task and stream per request); this one is
plain ASGI and returns a problem+json 400 for a version that does not exist, where Cadwyn would
answer 404 or 422.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from cadwyn.middleware import VersionPickingMiddleware
from starlette.types import Message, Receive, Scope, Send

from keel.api.http.request_state import request_state
from keel.api.rest.problems import problem_response
from keel.api.rest.versions import NEWEST_VERSION, SUPPORTED_VERSIONS, VERSION_HEADER
from keel.domain.api_keys import Principal

_HEADER = VERSION_HEADER.lower().encode()
_VERSIONED_PREFIX = "/v1/"


class KeelVersionPicker(VersionPickingMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_VERSIONED_PREFIX):
            # Health, metrics and docs are unversioned: no key lookup, never a version error.
            await self.app(scope, receive, send)
            return
        requested: str | None = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                requested = value.decode("latin-1").strip()
        if requested is not None and requested not in SUPPORTED_VERSIONS:
            await problem_response(
                400,
                "unknown-api-version",
                "Unknown API version",
                f"{VERSION_HEADER} must be one of: {', '.join(sorted(SUPPORTED_VERSIONS))}.",
            )(scope, receive, send)
            return
        # The caller as admission identified it (it runs first, on the same paths): one key
        # lookup per request, shared with the route.
        caller = request_state().caller
        principal: Principal | None = caller.principal if caller is not None else None
        if requested is not None:
            version = requested
        elif principal is not None and principal.api_version in SUPPORTED_VERSIONS:
            version = principal.api_version
        else:
            version = NEWEST_VERSION
        encoded = version.encode()

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (_HEADER, encoded)]
            await send(message)

        token = self.api_version_var.set(version)
        try:
            await self.app(scope, receive, send_with_version)
        finally:
            self.api_version_var.reset(token)


_CADWYN_FACTORY = "_generate_api_version_dependency"


def use_async_version_dependency() -> None:
    """Replace Cadwyn's per-route `Keel-Version` header dependency by an empty coroutine.

    Cadwyn adds to every versioned route a dependency that only documents the header and
    validates it as a date. It is a plain `def`, which FastAPI runs in a worker thread (one
    thread hop per request, the largest single cost of a profile read when measured), and
    Cadwyn solves it twice per request. `KeelVersionPicker` already validates the header, and
    `document_version_header` puts it back into OpenAPI, so the dependency can do nothing.
    Cadwyn is pinned; `tests/unit/test_rest_versioning.py` fails if this stops applying.
    """
    import cadwyn.applications as cadwyn_applications

    original = getattr(cadwyn_applications, _CADWYN_FACTORY)
    if getattr(original, "_keel_async", False):
        return

    def generate(**kwargs: Any) -> Callable[[], Awaitable[None]]:
        async def api_version_dependency() -> None:
            return None

        return api_version_dependency

    generate._keel_async = True  # type: ignore[attr-defined]
    setattr(cadwyn_applications, _CADWYN_FACTORY, generate)


VERSION_HEADER_PARAMETER = {
    "name": VERSION_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "enum": sorted(SUPPORTED_VERSIONS)},
    "description": "API version. Without it, the version pinned on your API key applies.",
}


def document_version_header(schema: dict[str, Any]) -> None:
    """Declare `Keel-Version` on every versioned operation of an OpenAPI document."""
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(_VERSIONED_PREFIX):
            continue
        for operation in operations.values():
            parameters = operation.setdefault("parameters", [])
            if all(p.get("name") != VERSION_HEADER for p in parameters):
                parameters.append(VERSION_HEADER_PARAMETER)
