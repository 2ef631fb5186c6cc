"""The composition root: the one place that names concrete adapters and wires them together."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from keel.admission import Admission
from keel.config import Settings
from keel.observability.database import DatabaseObserver
from keel.observability.logging import configure_logging
from keel.observability.management import management_port
from keel.observability.metrics import Metrics
from keel.observability.sampled_log import SampledLog
from keel.observability.tracing import PropagatingTracer, build_tracer_provider, tracer_from
from keel.ratelimit.catalog import RateLimitCatalog
from keel.ratelimit.guard import RateLimitGuard
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.ports import RateLimiter
from keel.resilience.adaptive_limit import GradientLimit
from keel.resilience.breaker import BreakerState, CircuitBreaker
from keel.resilience.load_shedder import LoadShedder, Priority
from keel.resilience.loop_lag import LoopLag
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy
from keel.service.attributes import AttributePolicy
from keel.service.auth import Authenticator
from keel.service.clock import SystemClock
from keel.service.pagination import Cursors
from keel.service.ports import Clock, InvalidationBus, Store
from keel.service.profile_reads import CachePolicy, ProfileReads
from keel.service.profiles import ProfileService
from keel.service.use_cases import CallerAuthenticator, ProfileUseCases
from keel.storage.migrations.runner import head_revision

if TYPE_CHECKING:
    from keel.api.grpc.server import GrpcServer


class SchemaNotCurrent(RuntimeError):
    """The database has not been migrated to the revision this code needs."""


@dataclass
class Core:
    """The service in this process and what it stands on; an edge deployment has none."""

    store: Store
    clock: Clock
    service: ProfileService
    authenticator: Authenticator
    reads: ProfileReads
    invalidation_bus: InvalidationBus | None
    expected_schema_revision: str

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when the database answers and carries the schema this code needs."""
        checks: dict[str, str] = {}
        try:
            revision = await asyncio.wait_for(self.store.schema_revision(), READINESS_TIMEOUT_SECONDS)
            checks["database"] = "ok"
            checks["migrations"] = (
                "current" if revision == self.expected_schema_revision else f"at {revision or 'none'}"
            )
        except Exception:  # noqa: BLE001 - any failure means "not ready"; the kind is in the check
            checks["database"] = "unreachable"
            checks["migrations"] = "unknown"
        return checks == {"database": "ok", "migrations": "current"}, checks

    async def close(self) -> None:
        if self.invalidation_bus is not None:
            await self.invalidation_bus.close()
        await self.store.close()


READINESS_TIMEOUT_SECONDS = 1.0


@dataclass
class Keel:
    """Everything a protocol adapter needs, built once per process."""

    settings: Settings
    profiles: ProfileUseCases
    authenticator: CallerAuthenticator
    admission: Admission  # the one request pipeline of every protocol
    core: Core | None  # None on an edge, whose use cases run on a remote core
    # The checks that decide readiness: the database (or the remote core, on an edge).
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, str]]]]
    metrics: Metrics
    tracer_provider: TracerProvider
    tracer: Tracer
    rate_limit_catalog: RateLimitCatalog
    rate_limits: RateLimitGuard | None  # None: the kill switch is on
    shedder: LoadShedder | None
    breakers: dict[str, CircuitBreaker]
    loop_lag: LoopLag
    # Dependencies /readyz reports without judging: name -> a call that fails when it is down.
    probes: dict[str, Callable[[], Awaitable[object]]]
    closers: list[Callable[[], Awaitable[object]]]

    @property
    def local(self) -> Core:
        """The in-process core, for operations that only a core can do (keys, housekeeping)."""
        if self.core is None:
            raise RuntimeError("This Keel is an edge: it has no database of its own.")
        return self.core

    async def close(self) -> None:
        for close in self.closers:
            await close()
        if self.rate_limits is not None:
            await self.rate_limits.close()
        if self.core is not None:
            await self.core.close()
        self.tracer_provider.shutdown()


_BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def build_breaker(name: str, metrics: Metrics, **options: float) -> CircuitBreaker:
    log = structlog.get_logger("keel.resilience")
    metrics.breaker_state.labels(name).set(0)

    def on_transition(breaker: str, previous: BreakerState, state: BreakerState) -> None:
        metrics.breaker_state.labels(breaker).set(_BREAKER_STATE_VALUES[state])
        metrics.breaker_transitions.labels(breaker, state.value).inc()
        log.warning("circuit_breaker_transition", breaker=breaker, previous=previous.value, state=state.value)

    return CircuitBreaker(name, on_transition=on_transition, **options)  # type: ignore[arg-type]


def build_rate_limiter(
    settings: Settings,
    metrics: Metrics,
    breakers: dict[str, CircuitBreaker],
    loop_lag: LoopLag,
    catalog: RateLimitCatalog,
) -> RateLimiter:
    """In process when embedded; on Redis, failing open to a local share of the quota."""
    if settings.redis_url is None:
        return InMemoryRateLimiter()
    from keel.ratelimit.fallback import FailOpenRateLimiter
    from keel.ratelimit.redis import RedisRateLimiter, connect

    timeout = settings.ratelimit_redis_timeout_seconds
    breaker = breakers["redis"] = build_breaker(
        "redis", metrics, open_seconds=settings.ratelimit_breaker_open_seconds
    )
    fallbacks = metrics.ratelimit_fallbacks
    fallback_log = SampledLog("keel.ratelimit")

    def on_fallback(reason: str) -> None:
        fallbacks.labels(reason).inc()
        fallback_log.warning("ratelimit_fallback", reason=reason)

    return FailOpenRateLimiter(
        RedisRateLimiter(connect(settings.redis_url), timeout_seconds=timeout, loop_lag=loop_lag),
        local=InMemoryRateLimiter(),
        breaker=breaker,
        nodes=settings.ratelimit_nodes,
        minimum_burst=max(catalog.costs.values()),
        on_fallback=on_fallback,
    )


def build_rate_limit_catalog(settings: Settings) -> RateLimitCatalog:
    plans = (
        {name: plan.to_plan(name) for name, plan in settings.ratelimit_plans.items()}
        if settings.ratelimit_plans is not None
        else None
    )
    return RateLimitCatalog.build(
        plans=plans,
        default_plan=settings.ratelimit_default_plan,
        anonymous_plan=settings.ratelimit_anonymous_plan,
        costs=settings.ratelimit_costs,
    )


def build_load_shedder(settings: Settings, metrics: Metrics, loop_lag: LoopLag) -> LoadShedder | None:
    if not settings.load_shedding_enabled:
        return None
    metrics.concurrency_limit.set(settings.concurrency_limit_initial)
    limit = GradientLimit(
        initial=settings.concurrency_limit_initial,
        minimum=settings.concurrency_limit_min,
        maximum=settings.concurrency_limit_max,
        on_change=metrics.concurrency_limit.set,
    )
    loop_lag.subscribe(limit.observe_loop_lag)
    shed = {p: metrics.load_shed.labels(p.name.lower()) for p in Priority}
    return LoadShedder(limit, on_shed=lambda priority: shed[priority].inc())


async def open_store(settings: Settings, observer: DatabaseObserver) -> Store:
    if settings.uses_postgres:
        from keel.storage.postgres.store import PostgresStore

        return await PostgresStore.open(
            settings.database_url,
            observer,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout_seconds,
            acquire_timeout=settings.db_acquire_timeout_seconds,
        )
    from keel.storage.sqlite.store import SqliteStore

    return await SqliteStore.open(
        settings.sqlite_path, observer, acquire_timeout=settings.db_acquire_timeout_seconds
    )


def guard_store(
    store: Store, settings: Settings, metrics: Metrics, breakers: dict[str, CircuitBreaker]
) -> Store:
    """Deadline and circuit breaker around every unit of work (see `keel.storage.guarded`)."""
    from keel.storage.guarded import GuardedStore

    breaker = breakers["database"] = build_breaker(
        "database", metrics, open_seconds=settings.db_breaker_open_seconds
    )
    return GuardedStore(store, breaker, timeout_seconds=settings.db_timeout_seconds)


def build_profile_reads(
    settings: Settings, store: Store, metrics: Metrics
) -> tuple[ProfileReads, InvalidationBus | None]:
    """Reads through the in-process cache, invalidated across processes over Redis when set."""
    retries = metrics.dependency_retries
    retry = RetryPolicy(
        RetryBudget(ratio=settings.retry_budget_ratio),
        Backoff(),
        on_retry=lambda outcome: retries.labels("database", outcome).inc(),
    )
    if not settings.cache_enabled:
        return ProfileReads(store, retry), None
    from keel.cache.memory import BoundedProfileCache

    bus: InvalidationBus | None = None
    if settings.redis_url is not None:
        from keel.cache.redis_bus import RedisInvalidationBus

        bus = RedisInvalidationBus.from_url(
            settings.redis_url, on_publish_failure=metrics.cache_invalidations_unpublished.inc
        )
    lookups = metrics.profile_cache_lookups
    outcomes = {name: lookups.labels(name) for name in ("hit", "miss", "coalesced", "stale", "error")}
    reads = ProfileReads(
        store,
        retry,
        cache=BoundedProfileCache(settings.cache_max_entries),
        bus=bus,
        policy=CachePolicy(settings.cache_fresh_seconds, settings.cache_stale_if_error_seconds),
        on_outcome=lambda outcome: outcomes[outcome].inc(),
    )
    return reads, bus


async def check_schema(store: Store, settings: Settings) -> None:
    applied = await store.schema_revision()
    expected = head_revision()
    if applied != expected:
        raise SchemaNotCurrent(
            f"The database {settings.redacted_database_url()} is at schema revision {applied or 'none'},"
            f" this Keel needs {expected}. Run `keel migrate` first."
        )


@dataclass
class _Protection:
    """What guards a process's callers, core or edge alike: limits, shedding, probes."""

    tracer_provider: TracerProvider
    tracer: Tracer
    catalog: RateLimitCatalog
    guard: RateLimitGuard | None
    shedder: LoadShedder | None
    breakers: dict[str, CircuitBreaker]
    loop_lag: LoopLag
    probes: dict[str, Callable[[], Awaitable[object]]]
    closers: list[Callable[[], Awaitable[object]]]


def _protection(settings: Settings, metrics: Metrics) -> _Protection:
    catalog = build_rate_limit_catalog(settings)
    tracer_provider = build_tracer_provider(
        exporter=settings.trace_exporter,
        sampling_ratio=settings.trace_sampling_ratio,
        otlp_endpoint=settings.otlp_endpoint,
        service_name=settings.service_name,
    )
    tracer = tracer_from(tracer_provider) if settings.trace_exporter != "none" else PropagatingTracer()
    breakers: dict[str, CircuitBreaker] = {}
    loop_lag = LoopLag()
    guard = (
        RateLimitGuard(build_rate_limiter(settings, metrics, breakers, loop_lag, catalog), metrics)
        if settings.ratelimit_enabled
        else None
    )
    probes: dict[str, Callable[[], Awaitable[object]]] = {}
    closers: list[Callable[[], Awaitable[object]]] = []
    if settings.redis_url is not None:
        from redis.asyncio import Redis

        # A client of its own, so a probe never waits behind the limiter's pool.
        redis_probe = Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        probes["redis"] = redis_probe.ping
        closers.append(redis_probe.aclose)
    return _Protection(
        tracer_provider=tracer_provider,
        tracer=tracer,
        catalog=catalog,
        guard=guard,
        shedder=build_load_shedder(settings, metrics, loop_lag),
        breakers=breakers,
        loop_lag=loop_lag,
        probes=probes,
        closers=closers,
    )


async def build_keel(settings: Settings, *, metrics: Metrics | None = None) -> Keel:
    """Build the process's object graph: a core over its database (refusing an unmigrated
    one), or an edge over a remote core when `core_url` is set."""
    metrics = metrics or Metrics()
    if settings.core_url is not None:
        return build_edge(settings, metrics)
    policy = (
        AttributePolicy.from_file(settings.attribute_schema)
        if settings.attribute_schema is not None
        else AttributePolicy()
    )
    guards = _protection(settings, metrics)
    observer = DatabaseObserver(metrics, guards.tracer, "postgresql" if settings.uses_postgres else "sqlite")
    store = await open_store(settings, observer)
    try:
        await check_schema(store, settings)
    except BaseException:
        await store.close()
        raise
    clock = SystemClock()
    store = guard_store(store, settings, metrics, guards.breakers)
    reads, bus = build_profile_reads(settings, store, metrics)
    service = ProfileService(
        store,
        clock,
        policy,
        settings.region,
        reads=reads,
        idempotency_lease=timedelta(seconds=settings.idempotency_lease_seconds),
        cursors=Cursors(settings.cursor_key()),
    )
    authenticator = Authenticator(store, ttl=settings.api_key_cache_seconds)
    core = Core(
        store=store,
        clock=clock,
        service=service,
        authenticator=authenticator,
        reads=reads,
        invalidation_bus=bus,
        expected_schema_revision=head_revision(),
    )
    return _keel(settings, metrics, guards, service, authenticator, core, core.readiness)


def build_edge(settings: Settings, metrics: Metrics) -> Keel:
    """An edge: REST and GraphQL here, every use case run by the core at `core_url` over gRPC."""
    from keel.remote.core_client import CoreClient
    from keel.remote.profiles import RemoteAuthenticator, RemoteProfiles

    assert settings.core_url is not None
    assert settings.core_api_key is not None  # the settings refuse a core URL without it
    guards = _protection(settings, metrics)
    retries = metrics.dependency_retries
    client = CoreClient(
        settings.core_url.removeprefix("grpc://"),
        settings.core_api_key.get_secret_value(),
        RetryPolicy(
            RetryBudget(ratio=settings.retry_budget_ratio),
            Backoff(),
            on_retry=lambda outcome: retries.labels("core", outcome).inc(),
        ),
        guards.tracer,
        timeout_seconds=settings.core_timeout_seconds,
    )
    guards.closers.append(client.close)

    authenticator = RemoteAuthenticator(client, ttl=settings.api_key_cache_seconds)
    return _keel(settings, metrics, guards, RemoteProfiles(client), authenticator, None, client.readiness)


def _keel(
    settings: Settings,
    metrics: Metrics,
    guards: _Protection,
    profiles: ProfileUseCases,
    authenticator: CallerAuthenticator,
    core: Core | None,
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, str]]]],
) -> Keel:
    return Keel(
        settings=settings,
        profiles=profiles,
        authenticator=authenticator,
        admission=Admission(authenticator, guards.catalog, guards.guard, guards.shedder),
        core=core,
        readiness=readiness,
        metrics=metrics,
        tracer_provider=guards.tracer_provider,
        tracer=guards.tracer,
        rate_limit_catalog=guards.catalog,
        rate_limits=guards.guard,
        shedder=guards.shedder,
        breakers=guards.breakers,
        loop_lag=guards.loop_lag,
        probes=guards.probes,
        closers=guards.closers,
    )


async def preflight(settings: Settings) -> None:
    """Everything `build_keel` checks (configuration, database, schema), then let go."""
    keel = await build_keel(settings)
    await keel.close()


async def _purge_idempotency_records(core: Core, every_seconds: float = 600.0) -> None:
    """Idempotency records live 24 h; expired ones are removed in the background."""
    log = structlog.get_logger("keel.housekeeping")
    while True:
        try:
            removed = await core.service.purge_expired_idempotency_records()
            if removed:
                log.info("idempotency_records_purged", count=removed)
        except Exception as error:  # noqa: BLE001 - housekeeping must outlive a database hiccup
            log.warning("idempotency_purge_failed", error=type(error).__name__)
        await asyncio.sleep(every_seconds)


async def start_grpc(keel: Keel) -> GrpcServer:
    """The gRPC server of a core, on `grpc_host:grpc_port` (port 0: any free port)."""
    from keel.api.grpc.server import GrpcServer

    settings = keel.settings
    if keel.core is None:
        raise ValueError("An edge (KEEL_CORE_URL) does not serve gRPC; its core does.")
    server = GrpcServer(keel, f"{settings.grpc_host}:{settings.grpc_port or 0}")
    await server.start()
    structlog.get_logger("keel.grpc").info("grpc_serving", host=settings.grpc_host, port=server.port)
    return server


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application `keel serve` runs: builds Keel on start-up, closes it on shutdown."""
    from keel.api.rest.app import build_rest_app

    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, metrics) as keel:
            app.state.keel = keel
            yield

    return build_rest_app(settings, metrics, lifespan=lifespan)


@asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[Keel]:
    """A built Keel with its background work (loop-lag watch; on a core, housekeeping, cache
    invalidations and gRPC when configured; the management port when configured), all stopped
    and closed on the way out."""
    keel = await build_keel(settings, metrics=metrics)
    background: list[asyncio.Task[None]] = []
    grpc_server: GrpcServer | None = None
    servers = ExitStack()
    try:
        if settings.management_port is not None:
            servers.enter_context(
                management_port(metrics.registry, settings.management_host, settings.management_port)
            )
        # Everything built so far (modules, schemas, routes) lives as long as the process: keep
        # it out of the cyclic collector, whose full passes over it stalled requests for tens of
        # milliseconds at the tail.
        gc.collect()
        gc.freeze()
        background.append(asyncio.create_task(keel.loop_lag.watch()))
        if keel.core is not None:
            background.append(asyncio.create_task(_purge_idempotency_records(keel.core)))
            background.append(asyncio.create_task(keel.core.reads.listen()))
        if settings.grpc_port is not None:
            grpc_server = await start_grpc(keel)
        yield keel
    finally:
        if grpc_server is not None:
            await grpc_server.stop()
        servers.close()
        for task in background:
            task.cancel()
        await keel.close()
