"""Choosing the API version of a request: the `Keel-Version` header, else the version pinned on
the caller's API key, else the newest.

Cadwyn's own picker is a BaseHTTPMiddleware (an extra task and stream per request); this one is
plain ASGI and returns a problem+json 400 for a version that does not exist, where Cadwyn would
answer 404 or 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cadwyn.middleware import VersionPickingMiddleware
from starlette.types import Message, Receive, Scope, Send

from keel.api.http.problems import problem_response
from keel.api.http.request_state import RequestState, request_state
from keel.api.rest.api_versions import NEWEST_VERSION, SUPPORTED_VERSIONS, VERSION_HEADER
from keel.api.rest.version_lifecycle import VERSIONS_PATH, VersionStatus
from keel.domain.api_keys import Principal

_HEADER = VERSION_HEADER.lower().encode()
_VERSIONED_PREFIX = "/v1/"
# Two versions answer the same URL differently: a cache must not give one's answer for the other.
_VARY = (b"vary", VERSION_HEADER.encode())


def _versioned(scope: Scope) -> bool:
    """A request answered in an API version: under /v1/, but for the list of versions (like
    health, metrics and docs: no key lookup, never a version error)."""
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    return path.startswith(_VERSIONED_PREFIX) and path != VERSIONS_PATH


def _requested(scope: Scope) -> str | None:
    requested: str | None = None
    for name, value in scope["headers"]:
        if name == _HEADER:
            requested = value.decode("latin-1").strip()
    return requested


class KeelVersionPicker(VersionPickingMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _versioned(scope):
            # Health, metrics, docs and the list of versions are unversioned: no key lookup,
            # never a version error.
            await self.app(scope, receive, send)
            return
        requested = _requested(scope)
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
        answer_headers = [(_HEADER, version.encode()), _VARY]

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *answer_headers]
            await send(message)

        token = self.api_version_var.set(version)
        try:
            await self.app(scope, receive, send_with_version)
        finally:
            self.api_version_var.reset(token)


class VersionNotices:
    """Every answer made in a deprecated version says so (RFC 9745 `Deprecation`, and RFC 8594
    `Sunset` once the operator set one, each with its `Link`), the refusals of the layers in
    front of the version picker (limits, admission, strict bodies, early refusals) included.
    Wraps `send` outside all of them: the version is the one the answer names in `Keel-Version`,
    else the one the request asked for, else the one pinned on the key admission identified.
    An answer made before the caller is known, to a request that names no version, gets no
    notice: its version is not known."""

    def __init__(self, statuses: Mapping[str, VersionStatus]) -> None:
        self._notices = {version: h for version, s in statuses.items() if (h := s.headers())}

    def wrap(self, scope: Scope, send: Send, state: RequestState) -> Send:
        if not self._notices or not _versioned(scope):
            return send
        notices = self._notices

        async def send_with_notices(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # A request that names a version (even an empty or unknown one) is not the key's.
                requested = _requested(scope)
                version = _answered_in(headers) or (requested if requested is not None else _pinned(state))
                extra = notices.get(version or "")
                if extra:
                    message["headers"] = _with_notices(headers, extra)
            await send(message)

        return send_with_notices


def _answered_in(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _HEADER:
            return value.decode("latin-1")
    return None


def _pinned(state: RequestState) -> str | None:
    caller = state.caller
    return caller.principal.api_version if caller is not None and caller.principal is not None else None


def _with_notices(
    headers: list[tuple[bytes, bytes]], notices: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The headers with the notices; a `Link` joins the answer's own (one field: a client that
    reads one `Link` value must still find a page's `rel="next"`)."""
    links = [value for name, value in notices if name == b"link"]
    merged = []
    for name, value in headers:
        if name.lower() == b"link" and links:
            value = b", ".join([value, *links])
            links = []
        merged.append((name, value))
    merged.extend((name, value) for name, value in notices if name != b"link")
    if links:
        merged.append((b"link", b", ".join(links)))
    return merged


# The versions, as a schema of its own: a generator makes one type of it (a schema written inside
# the parameter became one enum per operation in openapi-python-client, shared parameter or not).
VERSION_SCHEMA = {"title": "KeelVersion", "type": "string", "enum": sorted(SUPPORTED_VERSIONS)}
VERSION_HEADER_PARAMETER = {
    "name": VERSION_HEADER,
    "in": "header",
    "required": False,
    "schema": {"$ref": "#/components/schemas/KeelVersion"},
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
        components.setdefault("schemas", {})["KeelVersion"] = VERSION_SCHEMA
