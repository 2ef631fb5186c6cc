"""Choosing the API version of a request: the `Keel-Version` header, else the version pinned on
the caller's API key, else the newest.

Cadwyn's own picker is a BaseHTTPMiddleware (an extra task and stream per request); this one is
plain ASGI and returns a problem+json 400 for a version that does not exist, where Cadwyn would
answer 404 or 422.
"""

from __future__ import annotations

from cadwyn.middleware import VersionPickingMiddleware
from starlette.types import Message, Receive, Scope, Send

from keel.api.rest.dependencies import bearer_token
from keel.api.rest.problems import problem_response
from keel.api.rest.versions import NEWEST_VERSION, SUPPORTED_VERSIONS, VERSION_HEADER
from keel.domain.errors import KeelError

_HEADER = VERSION_HEADER.lower().encode()
_VERSIONED_PREFIX = "/v1/"


class KeelVersionPicker(VersionPickingMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_VERSIONED_PREFIX):
            # Health, metrics and docs are unversioned: no key lookup, never a version error.
            await self.app(scope, receive, send)
            return
        requested: str | None = None
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                requested = value.decode("latin-1").strip()
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        if requested is not None and requested not in SUPPORTED_VERSIONS:
            await problem_response(
                400,
                "unknown-api-version",
                "Unknown API version",
                f"{VERSION_HEADER} must be one of: {', '.join(sorted(SUPPORTED_VERSIONS))}.",
            )(scope, receive, send)
            return
        version = requested or await _pinned_version(scope, authorization)
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


async def _pinned_version(scope: Scope, authorization: str | None) -> str:
    token = bearer_token(authorization)
    if not token:
        return NEWEST_VERSION
    authenticator = scope["app"].state.keel.authenticator
    principal = authenticator.cached(token)
    if principal is None:
        try:
            principal = await authenticator.authenticate(token)
        except KeelError:
            # The route's own authentication answers 401/503 with the right problem document.
            return NEWEST_VERSION
    pinned: str = principal.api_version
    return pinned if pinned in SUPPORTED_VERSIONS else NEWEST_VERSION
