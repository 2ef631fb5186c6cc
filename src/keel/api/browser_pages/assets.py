"""The files the browser pages load, served by Keel at `/assets/...` from pinned packages.

Why these sources: Swagger UI comes from the `fastapi-offline` PyPI package (pinned in the lock
files), the leanest package that ships a current swagger-ui-bundle.js and swagger-ui.css as
plain files (its ReDoc bundle is not served: see `keel.api.browser_pages.swagger`). GraphiQL,
React and ReactDOM are in no such package, so their UMD builds are vendored under `vendor/`
(versions and provenance in vendor/README.md). Keel's own glue (page scripts and styles) is
under `static/`: the pages have no inline script or style, so the CSP needs no hash or nonce.

Only the files named here are served, by exact path: nothing is looked up from the request.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.responses import Response

PREFIX = "/assets"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
# Versioned paths: a new version is a new URL, so a browser may keep a copy for a day.
_CACHE_CONTROL = "public, max-age=86400"

SWAGGER_UI = "swagger-ui-fastapi-offline-1.7.7"
GRAPHIQL = "graphiql-3.8.3"
REACT = "react-18.2.0"
REACT_DOM = "react-dom-18.2.0"
KEEL = "keel-1"


@dataclass(frozen=True)
class Asset:
    media_type: str
    read: Callable[[], bytes]


def _package_file(package: str, *path: str) -> Callable[[], bytes]:
    return lambda: resources.files(package).joinpath(*path).read_bytes()


def _vendored(directory: str, name: str) -> Callable[[], bytes]:
    here = resources.files(__package__ or "keel.api.browser_pages")
    return lambda: gzip.decompress(here.joinpath("vendor", directory, f"{name}.gz").read_bytes())


def _own(name: str) -> Callable[[], bytes]:
    here = resources.files(__package__ or "keel.api.browser_pages")
    return lambda: here.joinpath("static", name).read_bytes()


ASSETS: dict[str, Asset] = {
    f"{SWAGGER_UI}/swagger-ui-bundle.js": Asset(
        _JS, _package_file("fastapi_offline", "static", "swagger-ui-bundle.js")
    ),
    f"{SWAGGER_UI}/swagger-ui.css": Asset(_CSS, _package_file("fastapi_offline", "static", "swagger-ui.css")),
    f"{GRAPHIQL}/graphiql.min.js": Asset(_JS, _vendored(GRAPHIQL, "graphiql.min.js")),
    f"{GRAPHIQL}/graphiql.min.css": Asset(_CSS, _vendored(GRAPHIQL, "graphiql.min.css")),
    f"{REACT}/react.production.min.js": Asset(_JS, _vendored(REACT, "react.production.min.js")),
    f"{REACT_DOM}/react-dom.production.min.js": Asset(
        _JS, _vendored(REACT_DOM, "react-dom.production.min.js")
    ),
    f"{KEEL}/swagger.js": Asset(_JS, _own("swagger.js")),
    f"{KEEL}/graphiql.js": Asset(_JS, _own("graphiql.js")),
    f"{KEEL}/pages.css": Asset(_CSS, _own("pages.css")),
}


def url(path: str) -> str:
    """The URL of an asset relative to a page at the root (`/docs`, `/graphql`): relative, so that
    it still resolves when Keel is served under a path prefix."""
    assert path in ASSETS, path
    return f"{PREFIX.lstrip('/')}/{path}"


@cache
def _body(path: str) -> bytes:
    # Read (and decompressed) once per process, on first request: only development serves them.
    return ASSETS[path].read()


async def asset(path: str) -> Response:
    found = ASSETS.get(path)
    if found is None:
        raise HTTPException(404, "No such asset.")
    return Response(
        _body(path),
        media_type=found.media_type,
        headers={"Cache-Control": _CACHE_CONTROL, "X-Content-Type-Options": "nosniff"},
    )


def assets_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    router.add_api_route(PREFIX + "/{path:path}", asset, methods=["GET"])
    return router
