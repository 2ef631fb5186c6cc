"""Swagger UI at `/docs`, Keel's own route in place of Cadwyn's: Cadwyn's page (FastAPI's
`get_swagger_ui_html`) loads Swagger UI from jsDelivr and starts it with an inline script, which
a strict Content-Security-Policy forbids. This page loads everything from `/assets/` and starts
Swagger UI from `static/swagger.js`, which reads the document's URL from a data attribute.

`?version=` picks the API version (default: the newest); the OpenAPI documents themselves stay
Cadwyn's, at `/openapi.json?version=...`. ReDoc is not served (`/redoc` is 404): its bundle
injects inline styles and starts web workers from blob: URLs, which this policy forbids, and
Swagger UI already documents the API.
"""

from __future__ import annotations

from collections.abc import Collection
from html import escape
from urllib.parse import quote

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse

from .assets import KEEL, SWAGGER_UI, url
from .security import PAGE_HEADERS

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"


def _page(version: str, supported: Collection[str]) -> str:
    openapi = f"{OPENAPI_PATH.lstrip('/')}?version={quote(version, safe='')}"
    others = "".join(
        f'<li><a href="?version={quote(v, safe="")}">{escape(v)}</a></li>'
        for v in sorted(supported, reverse=True)
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Keel API {escape(version)} - Swagger UI</title>
<link rel="stylesheet" href="{url(f"{SWAGGER_UI}/swagger-ui.css")}">
<link rel="stylesheet" href="{url(f"{KEEL}/pages.css")}">
</head>
<body>
<nav class="keel-versions"><span>API versions:</span><ul>{others}</ul></nav>
<div id="swagger-ui" data-openapi-url="{escape(openapi)}"></div>
<script src="{url(f"{SWAGGER_UI}/swagger-ui-bundle.js")}"></script>
<script src="{url(f"{KEEL}/swagger.js")}"></script>
</body>
</html>
"""


def docs_router(supported: Collection[str], newest: str) -> APIRouter:
    """Swagger UI at `/docs`, one page per API version in `supported` (`newest` by default):
    the versions are handed in by the application, which knows the REST API."""
    known = ", ".join(sorted(supported))

    async def swagger_ui(version: str | None = None) -> HTMLResponse:
        chosen = version or newest
        if chosen not in supported:
            raise HTTPException(404, f"No API version {chosen!r}; known: {known}.")
        return HTMLResponse(_page(chosen, supported), headers=PAGE_HEADERS)

    router = APIRouter(include_in_schema=False)
    router.add_api_route(DOCS_PATH, swagger_ui, methods=["GET"])
    return router
