"""Assembling the HTTP application: REST (Cadwyn versions, routes, problem handlers), GraphQL,
the operational endpoints, the browser pages and the request envelope around them all."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from cadwyn import Cadwyn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from keel import __version__
from keel.api.browser_pages.assets import assets_router
from keel.api.browser_pages.swagger import OPENAPI_PATH, docs_router
from keel.api.graphql import install_graphql
from keel.api.http.problems import install_problem_handlers
from keel.api.http.request_envelope import RequestEnvelope
from keel.api.http.request_state import request_scope
from keel.api.rest import health, versioned
from keel.api.rest.admission import EarlyRefusals, RestAdmission
from keel.api.rest.api_versions import NEWEST_VERSION, SUPPORTED_VERSIONS, VERSION_HEADER, versions
from keel.api.rest.cadwyn_internals import NewestServedDirectly, use_async_version_dependency
from keel.api.rest.documented_responses import document_problem_media_type
from keel.api.rest.hot_reads import HotProfileReads
from keel.api.rest.strict_bodies import StrictBodies
from keel.api.rest.version_lifecycle import VERSIONS_PATH, document_query_defaults, lifecycle
from keel.api.rest.version_list import versions_router
from keel.api.rest.version_picker import (
    KeelVersionPicker,
    VersionNotices,
    document_version_header,
)
from keel.config import Settings
from keel.observability.metrics import Metrics

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
_log = structlog.get_logger("keel.admission")


def build_http_app(
    settings: Settings,
    metrics: Metrics,
    *,
    lifespan: Lifespan | None = None,
    hot_reads: bool = True,
) -> Cadwyn:
    """The HTTP app: REST under Cadwyn, GraphQL, the operational endpoints and browser pages.
    `app.state.services` must hold the built services (see `RestServices`, `GraphQLServices`,
    `HealthServices`) before the first request. `hot_reads=False` leaves profile reads (of
    every version) to the framework's routing too (`keel.api.rest.hot_reads`; tests compare)."""
    use_async_version_dependency()
    statuses = lifecycle(versions, settings.api_sunsets)
    app = _KeelCadwyn(
        versions=versions,
        title="Keel",
        version=__version__,
        description="User profiles over a versioned REST API. Choose a version with the "
        f"`{VERSION_HEADER}` header; without it, the version pinned on your API key applies.",
        api_version_parameter_name=VERSION_HEADER,
        api_version_default_value=NEWEST_VERSION,
        versioning_middleware_class=_PickerThenHotReads if hot_reads else KeelVersionPicker,
        openapi_customizer=_customize_openapi,
        lifespan=lifespan,
        # Keel serves Swagger UI itself (keel.api.browser_pages.swagger: no CDN, strict CSP);
        # Cadwyn keeps serving the OpenAPI documents, unless production closed them.
        openapi_url=OPENAPI_PATH if settings.api_docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.version_notices = VersionNotices(statuses)
    app.early_refusals = EarlyRefusals(metrics, trusted_proxy_hops=settings.trusted_proxy_hops)
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(versions_router(statuses))
    if settings.api_port_metrics:
        app.include_router(health.metrics_router)
    if settings.api_docs:
        app.include_router(docs_router(SUPPORTED_VERSIONS, NEWEST_VERSION))
    if settings.api_docs or settings.graphql_graphiql:
        app.include_router(assets_router())
    install_graphql(app, settings, metrics)  # /graphql: outside /v1/, admitted by its own cost
    app.generate_and_include_versioned_routers(versioned.router)
    app.newest_source = (versioned.router, NEWEST_VERSION)  # see cadwyn_internals.py
    # Added after Cadwyn's version picker, so it runs before it; the envelope is outermost.
    app.add_middleware(StrictBodies)  # after admission (limits first), before the version picker
    app.add_middleware(RestAdmission, trusted_proxy_hops=settings.trusted_proxy_hops)
    app.add_middleware(
        RequestEnvelope,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
        request_timeout_seconds=settings.request_timeout_seconds,
    )
    return app


class _PickerThenHotReads(KeelVersionPicker):
    """The version picker, then the hot profile reads (of every version), then Cadwyn's routing."""

    def __init__(self, app: ASGIApp, **kwargs: Any) -> None:
        super().__init__(HotProfileReads(app), **kwargs)


class _KeelCadwyn(NewestServedDirectly):
    early_refusals: EarlyRefusals | None = None
    version_notices: VersionNotices | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Before Cadwyn, FastAPI and Starlette: see keel.api.rest.admission.EarlyRefusals.
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        with request_scope() as state:
            if self.version_notices is not None:
                send = self.version_notices.wrap(scope, send, state)
            refusals = self.early_refusals
            services = getattr(self.state, "services", None)
            if refusals is not None and services is not None:
                try:
                    if await refusals.answered(scope, send, services.admission, state):
                        return
                except Exception as error:  # noqa: BLE001 - logged, and the full path takes the request
                    # Outside the envelope's safety net: a bug here must not become a bare 500.
                    # The full path decides the request instead (and, should it fail the same
                    # way, answers with a problem).
                    _log.error("early_refusal_failed", exc_info=error)
            await super().__call__(scope, receive, send)


def _customize_openapi(schema: dict[str, Any], version: str | None) -> dict[str, Any]:
    """Authentication is checked in code (once per request, cached), not by a FastAPI security
    dependency, so the scheme is declared here for clients and Swagger UI's Authorize button;
    the version header likewise (see `use_async_version_dependency`).

    `version` is None for the document of the routes outside the versions
    (`/openapi.json?version=unversioned`): `GET /v1/versions`, which takes no version header
    and needs no key."""
    if version is not None:
        document_version_header(schema)
        document_query_defaults(versions, schema, version)
    document_problem_media_type(schema)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["ApiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `keel keys create`: `Authorization: Bearer keel_...`.",
    }
    schema["security"] = [{"ApiKey": []}]
    for operation in schema.get("paths", {}).get(VERSIONS_PATH, {}).values():
        operation["security"] = []  # served to anyone: no key
    return schema
