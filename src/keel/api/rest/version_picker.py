"""Choosing the API version of a request: the `Keel-Version` header, else the version pinned on
the caller's API key, else the newest.

Cadwyn's own picker is a BaseHTTPMiddleware (an extra task and stream per request); this one is
plain ASGI and returns a problem+json 400 for a version that does not exist, where Cadwyn would
answer 404 or 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from cadwyn.middleware import VersionPickingMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.api.http.problems import problem_response
from keel.api.http.request_state import request_state
from keel.api.rest.api_versions import NEWEST_VERSION, SUPPORTED_VERSIONS, VERSION_HEADER, versions
from keel.api.rest.version_lifecycle import VERSIONS_PATH, VersionStatus, lifecycle
from keel.domain.api_keys import Principal

_HEADER = VERSION_HEADER.lower().encode()
_VERSIONED_PREFIX = "/v1/"


class KeelVersionPicker(VersionPickingMiddleware):
    # Each version's status: an older version's answers say it is deprecated (and, once the
    # operator set one, its sunset). `with_lifecycle` gives a picker the configured one.
    statuses: ClassVar[Mapping[str, VersionStatus]] = lifecycle(versions, {})

    def __init__(self, app: ASGIApp, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._answer_headers = {
            version: [(_HEADER, version.encode()), *status.headers()]
            for version, status in self.statuses.items()
        }

    @classmethod
    def with_lifecycle(cls, statuses: Mapping[str, VersionStatus]) -> type[KeelVersionPicker]:
        return type(cls.__name__, (cls,), {"statuses": statuses})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(_VERSIONED_PREFIX)
            or scope["path"] == VERSIONS_PATH
        ):
            # Health, metrics, docs and the list of versions are unversioned: no key lookup,
            # never a version error.
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
        state = request_state()
        caller = state.caller
        principal: Principal | None = caller.principal if caller is not None else None
        if requested is not None:
            version = requested
        elif principal is not None and principal.api_version in SUPPORTED_VERSIONS:
            version = principal.api_version
        else:
            version = NEWEST_VERSION
        state.api_version = version
        answer_headers = self._answer_headers[version]

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *answer_headers]
            await send(message)

        token = self.api_version_var.set(version)
        try:
            await self.app(scope, receive, send_with_version)
        finally:
            self.api_version_var.reset(token)


VERSION_HEADER_PARAMETER = {
    "name": VERSION_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "enum": sorted(SUPPORTED_VERSIONS)},
    "description": "API version. Without it, the version pinned on your API key applies.",
}


_PARAMETER_REF = {"$ref": "#/components/parameters/KeelVersion"}


def document_version_header(schema: dict[str, Any]) -> None:
    """Declare `Keel-Version` on every versioned operation of an OpenAPI document, as one shared
    parameter (one enum for SDK generators, not a copy per operation)."""
    used = False
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(_VERSIONED_PREFIX):
            continue
        for operation in operations.values():
            parameters = operation.setdefault("parameters", [])
            if all(p.get("name") != VERSION_HEADER and p != _PARAMETER_REF for p in parameters):
                parameters.append(dict(_PARAMETER_REF))
                used = True
    if used:
        components = schema.setdefault("components", {})
        components.setdefault("parameters", {})["KeelVersion"] = VERSION_HEADER_PARAMETER
