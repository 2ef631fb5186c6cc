"""Guards for how Keel plugs into Cadwyn: if an upgrade changes these internals, fail loudly."""

from __future__ import annotations

from fastapi.dependencies.models import _is_coroutine_callable  # defined there, used by routing
from fastapi.routing import APIRoute

from keel.api.application import build_http_app
from keel.config import Settings
from keel.observability.metrics import Metrics


def test_no_versioned_route_runs_a_dependency_in_a_worker_thread() -> None:
    app = build_http_app(Settings(), Metrics())
    app._cadwyn_initialize()  # what Cadwyn does on its first request
    routes = [
        r
        for router in app.router.versioned_routers.values()
        for r in router.routes
        if isinstance(r, APIRoute)
    ]
    assert routes
    for route in routes:
        pending = list(route.dependant.dependencies)
        while pending:
            dependency = pending.pop()
            pending.extend(dependency.dependencies)
            if dependency.call is not None:
                # FastAPI's own test for "await it" versus "run it in a thread".
                assert _is_coroutine_callable(dependency.call), (route.path, dependency.call)


def test_the_newest_version_is_served_by_the_source_routes() -> None:
    from keel.api.rest import versioned as source
    from keel.api.rest.api_versions import NEWEST_VERSION

    app = build_http_app(Settings(), Metrics())
    app._cadwyn_initialize()
    handlers = {r.app for r in source.router.routes if isinstance(r, APIRoute)}
    newest = [r for r in app.router.versioned_routers[NEWEST_VERSION].routes if isinstance(r, APIRoute)]
    served = [r for r in newest if r.path.startswith("/v1/")]
    # 5 profile routes, the handle check, 6 webhook routes, export, erasure, its status, 7 API-key
    # routes and the audit log.
    assert len(served) == len(handlers) == 23
    assert {r.app for r in served} == handlers
