"""What guards a process's callers, core or edge alike: rate limits, load shedding, circuit
breakers, tracing, dependency probes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from keel.admission.operations import DEFAULT_COSTS
from keel.config import Settings
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

if TYPE_CHECKING:
    from keel.ratelimit.membership import FleetMembership

_BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def build_breaker(
    name: str, metrics: Metrics, *, clock: Callable[[], float], open_seconds: float
) -> CircuitBreaker:
    log = structlog.get_logger("keel.resilience")
    metrics.breaker_state.labels(name).set(0)

    def on_transition(breaker: str, previous: BreakerState, state: BreakerState) -> None:
        metrics.breaker_state.labels(breaker).set(_BREAKER_STATE_VALUES[state])
        metrics.breaker_transitions.labels(breaker, state.value).inc()
        log.warning("circuit_breaker_transition", breaker=breaker, previous=previous.value, state=state.value)

    return CircuitBreaker(name, open_seconds=open_seconds, clock=clock, on_transition=on_transition)


def build_rate_limiter(
    settings: Settings,
    metrics: Metrics,
    breakers: dict[str, CircuitBreaker],
    loop_lag: LoopLag,
    catalog: RateLimitCatalog,
    resilience_clock: Callable[[], float],
    tracer: Tracer | None = None,
    processes: Callable[[], int] = lambda: 1,
) -> RateLimiter:
    """In process when embedded; on Redis, failing open to a local share of the quota."""
    if settings.redis_url is None:
        return InMemoryRateLimiter()
    from keel.ratelimit.fallback import FailOpenRateLimiter
    from keel.ratelimit.redis import RedisRateLimiter, connect

    timeout = settings.ratelimit_redis_timeout_seconds
    breaker = breakers["redis"] = build_breaker(
        "redis", metrics, clock=resilience_clock, open_seconds=settings.ratelimit_breaker_open_seconds
    )
    fallbacks = metrics.ratelimit_fallbacks
    fallback_log = SampledLog("keel.ratelimit")

    def on_fallback(reason: str) -> None:
        fallbacks.labels(reason).inc()
        fallback_log.warning("ratelimit_fallback", reason=reason)

    return FailOpenRateLimiter(
        RedisRateLimiter(
            connect(settings.redis_url),
            timeout_seconds=timeout,
            loop_lag=loop_lag,
            tracer=tracer,
            # What a dead request left is taken over after the same time as its idempotency
            # reservation: longer than any request's deadline (the settings check it).
            slot_lease_seconds=settings.idempotency_lease_seconds,
        ),
        local=InMemoryRateLimiter(),
        breaker=breaker,
        # Each process decides alone while Redis is down: its share of the live count.
        nodes=processes,
        minimum_burst=max(catalog.costs.values()),
        on_fallback=on_fallback,
    )


def build_rate_limit_catalog(settings: Settings) -> RateLimitCatalog:
    plans = (
        {name: plan.to_plan(name) for name, plan in settings.ratelimit_plans.items()}
        if settings.ratelimit_plans is not None
        else None
    )
    unknown = sorted(set(settings.ratelimit_costs) - set(DEFAULT_COSTS))
    if unknown:
        raise ValueError(
            f"rate-limit costs name no operation: {', '.join(unknown)}"
            f" (the operations: {', '.join(sorted(DEFAULT_COSTS))})"
        )
    return RateLimitCatalog.build(
        plans=plans,
        default_plan=settings.ratelimit_default_plan,
        anonymous_plan=settings.ratelimit_anonymous_plan,
        costs={**DEFAULT_COSTS, **settings.ratelimit_costs},
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


@dataclass
class Protection:
    """What guards a process's callers, core or edge alike: limits, shedding, probes."""

    tracer_provider: TracerProvider
    tracer: Tracer
    catalog: RateLimitCatalog
    guard: RateLimitGuard | None
    shedder: LoadShedder | None
    breakers: dict[str, CircuitBreaker]
    # The monotonic clock (seconds) the process's circuit breakers and retry budgets read:
    # time.monotonic, or one a test advances to let an open period pass without waiting it out.
    resilience_clock: Callable[[], float]
    loop_lag: LoopLag
    probes: dict[str, Callable[[], Awaitable[object]]]
    closers: list[Callable[[], Awaitable[object]]]
    # The processes sharing the limits, counted on Redis (KEEL_REDIS_URL); its heartbeats are
    # started with the process's background work.
    membership: FleetMembership | None = None


def build_protection(
    settings: Settings, metrics: Metrics, *, resilience_clock: Callable[[], float] = time.monotonic
) -> Protection:
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
    loop_lag.subscribe(metrics.event_loop_lag.observe)
    probes: dict[str, Callable[[], Awaitable[object]]] = {}
    closers: list[Callable[[], Awaitable[object]]] = []
    membership = build_membership(settings, metrics)
    processes = membership.processes if membership is not None else lambda: 1
    if membership is not None:
        closers.append(membership.leave)
    guard = (
        RateLimitGuard(
            build_rate_limiter(
                settings, metrics, breakers, loop_lag, catalog, resilience_clock, tracer, processes
            ),
            metrics,
            # Slots are named only for a limiter that shares them: the in-process one ignores them.
            fleet_slots=settings.ratelimit_fleet_concurrency and settings.redis_url is not None,
        )
        if settings.ratelimit_enabled
        else None
    )
    if settings.redis_url is not None:
        from redis.asyncio import Redis

        # A client of its own, so a probe never waits behind the limiter's pool.
        redis_probe = Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        probes["redis"] = redis_probe.ping
        closers.append(redis_probe.aclose)
    return Protection(
        tracer_provider=tracer_provider,
        tracer=tracer,
        catalog=catalog,
        guard=guard,
        shedder=build_load_shedder(settings, metrics, loop_lag),
        breakers=breakers,
        resilience_clock=resilience_clock,
        loop_lag=loop_lag,
        probes=probes,
        closers=closers,
        membership=membership,
    )


def build_membership(settings: Settings, metrics: Metrics) -> FleetMembership | None:
    """The fleet's live process count on Redis; none without Redis (one process decides alone)."""
    if settings.redis_url is None:
        return None
    from redis.asyncio import Redis

    from keel.ratelimit.membership import FleetMembership

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    configured = settings.ratelimit_nodes * max(1, settings.workers)
    return FleetMembership(client, configured=configured, on_count=metrics.fleet_processes.set)
