"""Unversioned operational endpoints: liveness, readiness and metrics. Never authenticated,
never versioned, so probes and scrapers keep working whatever happens to the API. Metrics are a
router of their own: production serves them on the management port only (`api_port_metrics`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from keel.api.rest.dependencies import KeelDep

router = APIRouter(include_in_schema=False)
_READINESS_TIMEOUT = 1.0


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive and its event loop answers. Touches no dependency."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(keel: KeelDep) -> Response:
    """Ready to serve: the database answers and carries the schema this code needs (on an edge:
    the remote core answers its health check as serving). Every other
    dependency is reported, not judged: without Redis, rate limits are decided locally (fail
    open) and caches are not invalidated across processes, which is degraded but serving."""
    ready, checks = await keel.readiness()
    for name, probe in keel.probes.items():
        try:
            await asyncio.wait_for(probe(), _READINESS_TIMEOUT)
            checks[name] = "ok"
        except Exception:  # noqa: BLE001 - reported as it is; the kind does not matter here
            checks[name] = "unreachable"
    breakers = {name: breaker.state.value for name, breaker in keel.breakers.items()}
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks, "breakers": breakers},
        status_code=200 if ready else 503,
    )


metrics_router = APIRouter(include_in_schema=False)


@metrics_router.get("/metrics")
async def metrics(keel: KeelDep) -> Response:
    return Response(generate_latest(keel.metrics.registry), media_type=CONTENT_TYPE_LATEST)
