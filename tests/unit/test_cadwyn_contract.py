"""Guards for how Keel plugs into Cadwyn: if an upgrade changes these internals, fail loudly."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from cadwyn import Cadwyn
from fastapi.dependencies.models import _is_coroutine_callable  # defined there, used by routing
from fastapi.routing import APIRoute
from testkit.fastapi_caches import clear_fastapi_callable_caches

from keel.api.application import build_http_app
from keel.api.rest.cadwyn_internals import path_migration_mappings
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
    # routes and the audit log, /v1/me (GET, PATCH) and a profile's end-user link (PUT, GET, DELETE).
    assert len(served) == len(handlers) == 28
    assert {r.app for r in served} == handlers


def _path_migration_entries() -> list[tuple[int, list[Any]]]:
    from keel.api.rest.api_versions import versions

    mappings = path_migration_mappings(versions.versions)
    return [(key, instructions) for mapping in mappings for key, instructions in mapping.items()]


def _collect_apps() -> None:
    # FastAPI's endpoint caches keep dropped apps alive (testkit.fastapi_caches).
    assert clear_fastapi_callable_caches() == 3
    gc.unfreeze()  # tests/conftest.py freezes what earlier tests left: neither collected nor listed
    gc.collect()


def test_path_migrations_leave_with_their_app_and_name_only_live_routes_of_their_path() -> None:
    # Cadwyn keys path-based migrations by id() of a head route, on the VersionChange class: a
    # dropped app's entries, left behind, are run by whichever route of a later app gets the id
    # (a create once ran the list's downgrade: KeyError 'items', a 500). See cadwyn_internals 3.
    _collect_apps()
    before = len(_path_migration_entries())
    apps = [build_http_app(Settings(), Metrics()) for _ in range(3)]
    for app in apps:
        app._cadwyn_initialize()
    per_app = (len(_path_migration_entries()) - before) // len(apps)
    # The list's two downgrades and its page-size upgrade, on GET /v1/profiles.
    assert per_app == 3
    del apps[:2], app
    _collect_apps()
    entries = _path_migration_entries()
    assert len(entries) == before + per_app
    live = {id(o): o for o in gc.get_objects() if isinstance(o, APIRoute)}
    for key, instructions in entries:
        route = live.get(key)
        assert route is not None, f"a path migration names route id {key}, which no live route has"
        for instruction in instructions:
            assert route.path == instruction.path
            assert route.methods & instruction.methods, (route.methods, instruction.methods)


def test_a_generation_that_fails_leaves_no_path_migration_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    _collect_apps()
    before = len(_path_migration_entries())
    generate = Cadwyn._cadwyn_initialize

    def files_then_fails(self: Cadwyn) -> None:
        generate(self)
        assert len(_path_migration_entries()) == before + 3  # it did file them
        raise RuntimeError("generation failed")

    monkeypatch.setattr(Cadwyn, "_cadwyn_initialize", files_then_fails)
    app = build_http_app(Settings(), Metrics())
    with pytest.raises(RuntimeError, match="generation failed"):
        app._cadwyn_initialize()
    assert len(_path_migration_entries()) == before
