"""Every place Keel reaches into Cadwyn's internals, and why; nothing else in Keel does.

Cadwyn is pinned (requirements.lock); `tests/unit/test_cadwyn_contract.py` fails loudly when an
upgrade moves what these rely on. Decision record: docs/decisions/0001-framework-internals.md.

1. Serving the newest API version without Cadwyn's per-request conversion
   (`serve_newest_version_directly`, `NewestServedDirectly`).

Cadwyn wraps every generated route, the newest version's included, in a function that solves
the endpoint's dependencies a second time against the newest ("head") schemas, then converts
the request and the response between versions. For the newest version there is nothing to
convert by definition: migrations only ever run between it and older versions. Cadwyn's own
source marks this as a known cost ("only do this if there are migrations").

So, once Cadwyn has generated its routes, each route of the newest version is handled by the
route it was generated from: the same endpoint, the same dependencies, the same validation,
without the identity conversion. Matching, OpenAPI and every older version stay Cadwyn's.

2. No worker thread per request for the version header (`use_async_version_dependency`).

3. Path-based migrations forgotten with the app that registered them (`_cadwyn_initialize`, `_forget`).

Cadwyn files a `VersionChange`'s path-based migrations (`convert_response_to_previous_version_for
(path, methods)`, and the request ones) in a dict on the class, keyed by `id()` of the app's head
route, and never removes them. The classes live as long as the process; the routes live as long
as their app. Once an app is gone, its routes' ids are free, and a route of the next app built in
the process can get one: that route then runs another route's migrations. Found in CI: a create
(`POST /v1/profiles`) ran the list's downgrade and failed with `KeyError: 'items'` (a 500), after
the test session had built and dropped hundreds of apps. One app per process (`keel serve`) never
meets it, but nothing stops a process from building two (tests, the bench, an embedding app).
So the entries one app adds are removed when that app is collected; while it lives, its routes
live, and their ids cannot be reused. Which entries an app added is read by comparing the dicts
before and after its generation, which runs under a lock with the cyclic collector paused, so
that no other app's entries come or go in between; a generation that fails removes its own.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from cadwyn import Cadwyn
from fastapi import APIRouter
from fastapi.routing import APIRoute


def serve_newest_version_directly(app: Cadwyn, source: APIRouter, newest_version: str) -> int:
    """Point the newest version's generated routes at their source routes' handlers.

    Returns how many routes now bypass the conversion (all of the source's routes).
    """
    handlers = {(r.path, frozenset(r.methods or ())): r.app for r in source.routes if isinstance(r, APIRoute)}
    swapped = 0
    for route in app.router.versioned_routers[newest_version].routes:
        if isinstance(route, APIRoute):
            handler = handlers.get((route.path, frozenset(route.methods or ())))
            if handler is not None:
                route.app = handler
                swapped += 1
    return swapped


class NewestServedDirectly(Cadwyn):
    """A Cadwyn app whose newest version is served by the source routes (see above), from the
    moment Cadwyn generates its versioned routes (lazily, on the first request)."""

    newest_source: tuple[APIRouter, str] | None = None  # the source router and the newest version

    def _cadwyn_initialize(self) -> None:
        with _generating():
            mappings = path_migration_mappings(self.versions.versions)
            before = [dict(mapping) for mapping in mappings]
            generated = False
            try:
                super()._cadwyn_initialize()
                generated = True
            finally:
                # What this app filed: a key new since, or one whose list was replaced (its
                # old entry removed meanwhile, the id reused by this app's route).
                added = [
                    (mapping, [key for key, entries in mapping.items() if old.get(key) is not entries])
                    for mapping, old in zip(mappings, before, strict=True)
                ]
                if generated:
                    weakref.finalize(self, _forget, added)
                else:  # its routes are gone already, and so must be their entries
                    _forget(added)
        if self.newest_source is not None:
            serve_newest_version_directly(self, *self.newest_source)


# Cadwyn's path-based migrations, by head route id (see 3. above).
PATH_MIGRATION_MAPPINGS = ("_route_to_response_migration_mapping", "_route_to_request_migration_mapping")
_GENERATION = threading.Lock()


@contextmanager
def _generating() -> Iterator[None]:
    """One app's route generation at a time, without the cyclic collector: what the app files
    is told apart by comparing the dicts before and after, so neither another app's generation
    nor a collected app's removal may land in between."""
    with _GENERATION:
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()


def path_migration_mappings(versions: Iterable[Any]) -> list[dict[int, list[Any]]]:
    """Every version change's dicts of path-based migrations, keyed by head route id."""
    changes = [change for version in versions for change in version.changes]
    return [getattr(change, name) for change in changes for name in PATH_MIGRATION_MAPPINGS]


def _forget(added: list[tuple[dict[int, list[Any]], list[int]]]) -> None:
    """Remove the entries an app's head routes filed (when it is collected: `weakref.finalize`)."""
    for mapping, keys in added:
        for key in keys:
            mapping.pop(key, None)


_CADWYN_FACTORY = "_generate_api_version_dependency"


def use_async_version_dependency() -> None:
    """Replace Cadwyn's per-route `Keel-Version` header dependency by an empty coroutine.

    Cadwyn adds to every versioned route a dependency that only documents the header and
    validates it as a date. It is a plain `def`, which FastAPI runs in a worker thread (one
    thread hop per request, the largest single cost of a profile read when measured), and
    Cadwyn solves it twice per request. `KeelVersionPicker` already validates the header, and
    `document_version_header` puts it back into OpenAPI, so the dependency can do nothing.
    Cadwyn is pinned; `tests/unit/test_cadwyn_contract.py` fails if this stops applying.
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
