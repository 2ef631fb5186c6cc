"""Profile reads, of every API version, answered without FastAPI's routing.

`GET /v1/profiles/{profile_id}` is the hottest request Keel serves. Through the framework it
costs, besides the read itself, Cadwyn's version routing, Starlette's route matching, FastAPI's
dependency solving and its exception and exit-stack layers: measured, more CPU than the
database read. This layer sits right after the version picker (so after the envelope, admission
and strict bodies, which every request passes) and answers these reads by calling the route's
own function, `routes.profile_answer`; its `KeelError`s become the same problems the problem
handlers write. For an older version, the route's function turns the profile document back
into that version's shape, before encoding it, by the same downgrades Cadwyn's migrations apply
(`version_changes.PROFILE_DOWNGRADES`). Every other request goes on to the framework's routing.

`tests/e2e/test_hot_reads.py` holds the promise: for the same requests, the same status,
headers and body as the framework's route.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.api.http.problems import domain_problem
from keel.api.http.request_state import request_state
from keel.api.rest import routes
from keel.api.rest.api_versions import SUPPORTED_VERSIONS, versions
from keel.api.rest.version_changes import profile_downgrades
from keel.domain.errors import KeelError

_PREFIX = "/v1/profiles/"
_TEMPLATE = _PREFIX + "{profile_id}"


def profile_id_of(path: str) -> str | None:
    """The id in a `/v1/profiles/{profile_id}` path, matched as Starlette matches the route's
    template (one non-empty segment), or None for any other path."""
    if not path.startswith(_PREFIX):
        return None
    profile_id = path[len(_PREFIX) :]
    return profile_id if profile_id and "/" not in profile_id else None


def _route() -> APIRoute:
    # The route object itself, so that metrics, traces and the access log label the request
    # with its template exactly as when the framework routes it.
    for route in routes.router.routes:
        if isinstance(route, APIRoute) and route.path == _TEMPLATE and "GET" in (route.methods or ()):
            return route
    raise LookupError(f"no GET {_TEMPLATE} route")  # pragma: no cover - a renamed route


class HotProfileReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route = _route()
        self._downgrades = {version: profile_downgrades(versions, version) for version in SUPPORTED_VERSIONS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        profile_id = (
            profile_id_of(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        )
        downgrades = self._downgrades.get(request_state().api_version or "")
        if profile_id is None or downgrades is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route
        scope["endpoint"] = self._route.endpoint
        scope["path_params"] = {"profile_id": profile_id}
        request = Request(scope, receive)
        try:
            response = await routes.profile_answer(request, profile_id, downgrades)
        except KeelError as error:
            response = domain_problem(error, request.url.path)
        await response(scope, receive, send)
