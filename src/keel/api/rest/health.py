"""Unversioned operational endpoints: liveness, readiness and metrics. Never authenticated,
never versioned, so probes and scrapers keep working whatever happens to the API. Metrics are a
router of their own: production serves them on the management port only (`api_port_metrics`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from keel.observability.metrics import Metrics
from keel.resilience.breaker import CircuitBreaker


class HealthServices(Protocol):
    """What the operational endpoints need of the process (the app's state `services`)."""

    @property
    def readiness(self) -> Callable[[], Awaitable[tuple[bool, dict[str, str]]]]: ...
    @property
    def probes(self) -> Mapping[str, Callable[[], Awaitable[object]]]: ...
    @property
    def breakers(self) -> Mapping[str, CircuitBreaker]: ...
    @property
    def metrics(self) -> Metrics: ...


async def _services(request: Request) -> HealthServices:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    services: HealthServices = request.app.state.services
    return services


ServicesDep = Annotated[HealthServices, Depends(_services)]

router = APIRouter(include_in_schema=False)
_READINESS_TIMEOUT = 1.0


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive and its event loop answers. Touches no dependency."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(services: ServicesDep) -> Response:
    """Ready to serve: the database answers and carries the schema this code needs (on an edge:
    the remote core answers its health check as serving). Every other
    dependency is reported, not judged: without Redis, rate limits are decided locally (fail
    open) and caches are not invalidated across processes, which is degraded but serving."""
    status, report = await readiness_report(services)
    return JSONResponse(report, status_code=status)


async def readiness_report(services: HealthServices) -> tuple[int, dict[str, object]]:
    """`/readyz`'s status and body, on the API port and on the management port alike."""
    ready, checks = await services.readiness()
    for name, probe in services.probes.items():
        try:
            await asyncio.wait_for(probe(), _READINESS_TIMEOUT)
            checks[name] = "ok"
        except Exception:  # noqa: BLE001 - reported as it is; the kind does not matter here
            checks[name] = "unreachable"
    breakers = {name: breaker.state.value for name, breaker in services.breakers.items()}
    report: dict[str, object] = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "breakers": breakers,
    }
    return (200 if ready else 503), report


metrics_router = APIRouter(include_in_schema=False)


@metrics_router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
