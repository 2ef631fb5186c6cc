"""Guards for how Keel plugs into Cadwyn: if an upgrade changes these internals, fail loudly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fastapi.dependencies.models import _is_coroutine_callable  # defined there, used by routing
from fastapi.routing import APIRoute

from keel.api.application import build_http_app
from keel.api.rest.api_versions import NEWEST_VERSION
from keel.api.rest.cadwyn_internals import NewestServedDirectly
from keel.bootstrap.lifecycle import create_app
from keel.config import Settings
from keel.observability.metrics import Metrics
from keel.storage.migrations.runner import migrate


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
    assert (
        len(served) == len(handlers) == 15
    )  # 5 profile routes, the handle check, 6 webhook routes, export, erasure, its status
    assert {r.app for r in served} == handlers


async def test_the_start_up_prepares_what_the_first_request_would_build(tmp_path: Path) -> None:
    """Cadwyn generates its routes on its first request unless `_cadwyn_initialized` says it has,
    and Starlette builds its middleware stack on its first call unless `middleware_stack` is
    set: after `keel serve`'s start-up both are done, so the first request pays for neither."""
    url = f"sqlite:///{tmp_path / 'keel.db'}"
    await asyncio.to_thread(migrate, url)
    app = create_app(Settings(database_url=url))
    assert isinstance(app, NewestServedDirectly)
    assert not app._cadwyn_initialized
    assert app.middleware_stack is None
    async with app.router.lifespan_context(app):
        assert app._cadwyn_initialized
        assert app.middleware_stack is not None
        generated = app.router.versioned_routers[NEWEST_VERSION].routes
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
            assert (await client.get("/healthz")).status_code == 200
        assert app.router.versioned_routers[NEWEST_VERSION].routes is generated  # not generated again
