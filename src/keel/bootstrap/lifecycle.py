"""The process from start to stop: build the services, start the background work and the
servers, close everything on the way out; the ASGI application `keel serve` runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.lowlevel
import structlog
from fastapi import FastAPI

from keel.bootstrap.container import Services, assemble, close_all
from keel.bootstrap.core import StoreOpener, build_core, open_store
from keel.bootstrap.edge import build_edge
from keel.bootstrap.protection import build_protection
from keel.bootstrap.workers import management_ports
from keel.config import Settings
from keel.observability.agent_check import agent_check_port
from keel.observability.logging import configure_logging
from keel.observability.management import Probe, management_port
from keel.observability.metrics import Metrics
from keel.service.housekeeping import purge_deleted_profiles, purge_idempotency_records

if TYPE_CHECKING:
    from keel.api.grpc.server import GrpcServer


async def build_services(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    store_opener: StoreOpener = open_store,
    resilience_clock: Callable[[], float] = time.monotonic,
) -> Services:
    """Build the process's object graph: a core over its database (refusing an unmigrated
    one), or an edge over a remote core when `core_url` is set. `resilience_clock`: the monotonic
    clock the circuit breakers and retry budgets read (tests hand in one they advance)."""
    metrics = metrics or Metrics()
    if settings.core_url is not None:
        return build_edge(settings, metrics, resilience_clock=resilience_clock)
    guards = build_protection(settings, metrics, resilience_clock=resilience_clock)
    try:
        core = await build_core(settings, metrics, guards, store_opener=store_opener)
    except BaseException:
        # An unmigrated database, a layout it does not record...: the protection's Redis
        # clients are already open, and nothing else will close them.
        await close_all([*guards.closers, *([guards.guard.close] if guards.guard is not None else [])])
        raise
    return assemble(
        settings,
        metrics,
        guards,
        core.service,
        core.credentials,
        core,
        core.readiness,
        personal_data=core.personal_data,
        end_users=core.end_users,
    )


async def preflight(settings: Settings) -> None:
    """Everything `build_services` checks (configuration, database, schema), and the API
    versions' sunsets, then let go."""
    from keel.api.rest.api_versions import versions
    from keel.api.rest.version_lifecycle import lifecycle

    lifecycle(versions, settings.api_sunsets)  # a ValueError names what is wrong
    keel = await build_services(settings)
    await keel.close()


async def start_grpc(keel: Services) -> GrpcServer:
    """The gRPC server of a core, on `grpc_host:grpc_port` (port 0: any free port)."""
    from keel.api.grpc.server import GrpcServer

    settings = keel.settings
    if keel.core is None:
        raise ValueError("An edge (KEEL_CORE_URL) does not serve gRPC; its core does.")
    server = GrpcServer(keel, keel.core.authenticator, f"{settings.grpc_host}:{settings.grpc_port or 0}")
    await server.start()
    structlog.get_logger("keel.grpc").info("grpc_serving", host=settings.grpc_host, port=server.port)
    return server


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application `keel serve` runs: builds Services on start-up, closes it on shutdown."""
    from keel.api.application import build_http_app

    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, metrics) as keel:
            app.state.services = keel
            yield

    return build_http_app(settings, metrics, lifespan=lifespan)


# Allocations (net of deallocations) between two young-generation collections; CPython's default
# is 700. Requests waiting on the database hold their objects (scope, span, frames, records)
# while the others run, and with 32 such requests in flight that net count crosses 700 about
# once every 8 requests: each young collection then walks, and promotes, the live objects of
# every request in flight, and the promotions feed older-generation passes. Measured in process
# on uncached reads at 32 concurrent requests (gc.callbacks timing): ~60 us of collection per
# request at 700, ~5 us at 10,000, against ~6 us for cache hits. Garbage cycles are still
# collected, after 10,000 allocations instead of 700.
YOUNG_GENERATION_THRESHOLD = 10_000


@contextmanager
def collector_tuned_for_serving() -> Iterator[None]:
    """The cyclic garbage collector as a server needs it, its thresholds restored on the way out."""
    # Everything built so far (modules, schemas, routes) lives as long as the process: keep it
    # out of the cyclic collector, whose full passes over it stalled requests for tens of
    # milliseconds at the tail.
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


T = TypeVar("T")
# How long the event loop may take to run a probe's first step: past it, the loop is stalled.
LOOP_RESPONSE_SECONDS = 2.0
# How long a readiness report may take once the loop runs it: above the sum of its own bounds
# (the database's, then each probe's in turn, and on an edge the core's).
READINESS_REPORT_SECONDS = 10.0


def management_probes(keel: Services, loop: asyncio.AbstractEventLoop) -> dict[str, Probe]:
    """`/healthz` and `/readyz` for the management port, whose server runs in a thread: each
    runs on the event loop, bounded, so a loop that stalls fails them as it would the API
    port's (which it could not even answer); a slow dependency is reported by `/readyz`'s own
    checks, as on the API port."""
    from keel.api.rest.health import readiness_report

    def answer(status: str, checks: dict[str, str]) -> bytes:
        return json.dumps({"status": status, "checks": checks, "breakers": {}}).encode()

    def on_loop(coroutine: Coroutine[Any, Any, T], bound: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(bound)
        except TimeoutError:
            future.cancel()
            raise

    def loop_responds() -> bool:
        try:
            on_loop(asyncio.sleep(0), LOOP_RESPONSE_SECONDS)
        except TimeoutError:
            return False
        return True

    def healthz() -> tuple[int, bytes]:
        return (200, b'{"status": "ok"}') if loop_responds() else (503, b'{"status": "unresponsive"}')

    def readyz() -> tuple[int, bytes]:
        if not loop_responds():
            return 503, answer("not ready", {"event_loop": "unresponsive"})
        try:
            status, report = on_loop(readiness_report(keel), READINESS_REPORT_SECONDS)
        except TimeoutError:
            return 503, answer("not ready", {"readiness": "timeout"})
        return status, json.dumps(report).encode()

    return {"/healthz": healthz, "/readyz": readyz}


@asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[Services]:
    """A built Services with its background work (loop-lag watch; on a core, housekeeping, cache
    invalidations and gRPC when configured; the management port when configured), all stopped
    and closed on the way out."""
    keel = await build_services(settings, metrics=metrics)
    background: list[asyncio.Task[None]] = []
    relay: asyncio.Task[None] | None = None
    dispatcher: asyncio.Task[None] | None = None
    grpc_server: GrpcServer | None = None
    servers = ExitStack()
    try:
        if settings.management_port is not None:
            probes = management_probes(keel, asyncio.get_running_loop())
            ports = management_ports(settings)  # one per worker process (keel.bootstrap.workers)
            servers.enter_context(management_port(metrics.registry, settings.management_host, ports, probes))
        shedder = keel.shedder
        if settings.agent_port is not None and shedder is not None:  # settings refuse one without
            servers.enter_context(
                agent_check_port(settings.management_host, settings.agent_port, shedder.steady_concurrency)
            )
        # The router's first timeout scope imports anyio's asyncio backend (a dozen modules)
        # on the event loop: the first request after each start, `/healthz` included, waited
        # 60 ms for it on a busy machine (bench/loop_stalls.py). Imported here, before the
        # socket opens (tests/e2e/test_first_requests.py).
        await anyio.lowlevel.checkpoint()
        servers.enter_context(collector_tuned_for_serving())
        background.append(asyncio.create_task(keel.loop_lag.watch()))
        if keel.membership is not None:
            background.append(asyncio.create_task(keel.membership.run()))
        if keel.proxy_refusals is not None:
            background.append(asyncio.create_task(keel.proxy_refusals.run()))
        if keel.key_revocations is not None:
            forget_key, forget_all = _key_changes(keel)
            background.append(asyncio.create_task(keel.key_revocations.listen(forget_key, forget_all)))
        if keel.core is not None:
            if keel.core.idempotency_purge is not None:
                background.append(asyncio.create_task(purge_idempotency_records(keel.core.idempotency_purge)))
            background.append(asyncio.create_task(keel.core.reads.listen()))
            if keel.core.deleted_purge is not None:
                background.append(asyncio.create_task(purge_deleted_profiles(keel.core.deleted_purge)))
            if keel.core.layout_watch is not None:
                background.append(asyncio.create_task(keel.core.layout_watch()))
            if keel.core.replica_watch is not None:
                background.append(asyncio.create_task(keel.core.replica_watch()))
            if keel.core.erasure_runner is not None:
                background.append(asyncio.create_task(keel.core.erasure_runner.run()))
            if keel.core.relay is not None:
                relay = asyncio.create_task(keel.core.relay.run())
            if keel.core.dispatcher is not None:
                dispatcher = asyncio.create_task(keel.core.dispatcher.run())
        if settings.grpc_port is not None:
            grpc_server = await start_grpc(keel)
        yield keel
    finally:
        if grpc_server is not None:
            await grpc_server.stop(settings.shutdown_grace_seconds)
        servers.close()
        for task in background:
            task.cancel()
        for leader in (relay, dispatcher):
            if leader is not None:
                # Awaited, so that it gives its lease back before the database is closed.
                leader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await leader
        await keel.close()


def _key_changes(keel: Services) -> tuple[Callable[[str], None], Callable[[], None]]:
    """What a key-change push does here: the key's cached answer forgotten and, where this
    process writes refusals to a proxy, the key's deadline there cleared (the change may have
    been made on a core that writes to none); a missed push (Redis reconnected) clears them all."""
    authenticator, refusals = keel.authenticator, keel.proxy_refusals
    if refusals is None:
        return authenticator.forget_key, authenticator.forget_all

    def forget_key(key_id: str) -> None:
        authenticator.forget_key(key_id)
        refusals.forgive(key_id)

    def forget_all() -> None:
        authenticator.forget_all()
        refusals.forgive_all()

    return forget_key, forget_all
