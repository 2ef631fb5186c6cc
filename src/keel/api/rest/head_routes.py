"""Serving the newest API version without Cadwyn's per-request conversion.

Cadwyn wraps every generated route, the newest version's included, in a function that solves
the endpoint's dependencies a second time against the newest ("head") schemas, then converts
the request and the response between versions. For the newest version there is nothing to
convert by definition: migrations only ever run between it and older versions. Cadwyn's own
source marks this as a known cost ("only do this if there are migrations").

So, once Cadwyn has generated its routes, each route of the newest version is handled by the
route it was generated from: the same endpoint, the same dependencies, the same validation,
without the identity conversion. Matching, OpenAPI and every older version stay Cadwyn's.
"""

from __future__ import annotations

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
