"""The process's object graph once built: the services every protocol adapter is handed (each
through the narrow protocol it declares), and the in-process core of a core deployment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from keel.admission import Admission
from keel.bootstrap.protection import Protection
from keel.config import Settings, proxy_runtime_apis
from keel.observability.metrics import Metrics
from keel.ratelimit.catalog import RateLimitCatalog
from keel.ratelimit.guard import RateLimitGuard
from keel.ratelimit.proxy_refusals import HaproxyRefusals
from keel.resilience.breaker import CircuitBreaker
from keel.resilience.load_shedder import LoadShedder
from keel.resilience.loop_lag import LoopLag
from keel.service.api_key_admin import ApiKeyAdmin
from keel.service.auth import Authenticator
from keel.service.end_users import EndUserProfiles
from keel.service.erasure import ErasureSagaRunner
from keel.service.housekeeping import PurgesDeletedProfiles, PurgesIdempotencyRecords
from keel.service.outbox import OutboxRelay
from keel.service.personal_data import PersonalDataService
from keel.service.ports import Clock, InvalidationBus, KeyRevocations, Store
from keel.service.profile_reads import ProfileReads
from keel.service.profiles import ProfileService
from keel.service.use_cases import (
    EndUserUseCases,
    PersonalDataUseCases,
    ProfileUseCases,
    RevocableAuthenticator,
)
from keel.service.webhook_dispatcher import WebhookDispatcher
from keel.service.webhooks import WebhookAdmin

if TYPE_CHECKING:
    from keel.ratelimit.membership import FleetMembership


class FleetQueries(Protocol):
    """GraphQL's persisted queries shared by the fleet (keel.cache.redis_queries): what
    keel.api.graphql.persisted.SharedQueries asks, and a close."""

    async def get(self, sha256: str) -> str | None: ...
    async def put(self, sha256: str, query: str) -> None: ...
    async def close(self) -> None: ...


@dataclass
class Core:
    """The service in this process and what it stands on; an edge deployment has none."""

    store: Store
    clock: Clock
    service: ProfileService
    authenticator: Authenticator  # API keys only (the gRPC server's)
    # API keys and end users' access tokens (REST and GraphQL): over `authenticator`.
    credentials: RevocableAuthenticator
    reads: ProfileReads
    invalidation_bus: InvalidationBus | None
    expected_schema_revision: str
    relay: OutboxRelay | None = None  # publishes the outbox when KEEL_NATS_URL is set
    webhooks: WebhookAdmin | None = None
    dispatcher: WebhookDispatcher | None = None  # delivers the outbox's events to webhooks
    personal_data: PersonalDataService | None = None  # export, erasure, purge
    erasure_runner: ErasureSagaRunner | None = None
    # Housekeeping, over the background jobs' store (their own database breaker).
    idempotency_purge: PurgesIdempotencyRecords | None = None
    deleted_purge: PurgesDeletedProfiles | None = None
    # End users' own profiles (`/v1/me`): with KEEL_OIDC_* set.
    end_users: EndUserProfiles | None = None
    # Publishes the layout record and a migration's progress as gauges (an SQL store's).
    layout_watch: Callable[[], Coroutine[Any, Any, None]] | None = None
    # Follows the read replicas' replay positions (a PostgreSQL store with replicas).
    replica_watch: Callable[[], Coroutine[Any, Any, None]] | None = None

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
        closers: list[Callable[[], Awaitable[object]]] = []
        if self.invalidation_bus is not None:
            closers.append(self.invalidation_bus.close)
        if self.relay is not None:
            closers.append(self.relay.publisher.close)
        if self.dispatcher is not None:
            closers.append(self.dispatcher.sender.close)
        closers.append(self.store.close)
        await close_all(closers)


async def close_all(closers: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Run every closer in order, also after one has failed (a client left open holds a socket
    and, for Redis, a live-process entry); then raise the first failure."""
    first: Exception | None = None
    for close in closers:
        try:
            await close()
        except Exception as error:  # noqa: BLE001 - re-raised below, once every closer ran
            if first is None:
                first = error
    if first is not None:
        raise first


READINESS_TIMEOUT_SECONDS = 1.0


@dataclass
class Services:
    """Everything the protocol adapters need, built once per process. Each adapter declares the
    narrow protocol it needs of this (`keel.api.*`) and never imports it."""

    settings: Settings
    profiles: ProfileUseCases
    authenticator: RevocableAuthenticator
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
    # Export and erasure: a core's own; None on an edge (not served there yet).
    personal_data: PersonalDataUseCases | None = None
    # End users' own profiles: a core's, with KEEL_OIDC_* set; None otherwise.
    end_users: EndUserUseCases | None = None
    # API-key revocations pushed between processes (KEEL_REDIS_URL); None: each process's key
    # cache TTL is the bound.
    key_revocations: KeyRevocations | None = None
    # The fleet's live process count on Redis (its heartbeats run with the background work).
    membership: FleetMembership | None = None
    # GraphQL's persisted queries shared by the fleet (KEEL_REDIS_URL); None: each process's own.
    persisted_queries: FleetQueries | None = None
    # API keys managed over the API: a core's; None on an edge.
    api_keys: ApiKeyAdmin | None = None
    # Refusals written to the HAProxy tables in front (KEEL_PROXY_RUNTIME_API); its sender
    # runs with the background work.
    proxy_refusals: HaproxyRefusals | None = None

    @property
    def webhooks(self) -> WebhookAdmin | None:
        """Webhook administration: a core's; None on an edge."""
        return self.core.webhooks if self.core is not None else None

    @property
    def local(self) -> Core:
        """The in-process core, for operations that only a core can do (keys, housekeeping)."""
        if self.core is None:
            raise RuntimeError("This Services is an edge: it has no database of its own.")
        return self.core

    async def close(self) -> None:
        closers = list(self.closers)
        if self.key_revocations is not None:
            closers.append(self.key_revocations.close)
        if self.persisted_queries is not None:
            closers.append(self.persisted_queries.close)
        if self.rate_limits is not None:
            closers.append(self.rate_limits.close)
        if self.core is not None:
            closers.append(self.core.close)
        try:
            await close_all(closers)
        finally:
            self.tracer_provider.shutdown()


def assemble(
    settings: Settings,
    metrics: Metrics,
    guards: Protection,
    profiles: ProfileUseCases,
    authenticator: RevocableAuthenticator,
    core: Core | None,
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, str]]]],
    personal_data: PersonalDataUseCases | None = None,
    end_users: EndUserUseCases | None = None,
) -> Services:
    revocations = _key_revocations(settings)
    refusals = _proxy_refusals(settings, metrics) if guards.guard is not None else None
    if refusals is not None and guards.guard is not None:
        guards.guard.on_switched_off = refusals.forgive_all
    return Services(
        settings=settings,
        profiles=profiles,
        authenticator=authenticator,
        admission=Admission(authenticator, guards.catalog, guards.guard, guards.shedder, refusals),
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
        personal_data=personal_data,
        end_users=end_users,
        key_revocations=revocations,
        membership=guards.membership,
        persisted_queries=_persisted_queries(settings),
        api_keys=_api_key_admin(settings, guards, core, authenticator, revocations, refusals),
        proxy_refusals=refusals,
    )


def _proxy_refusals(settings: Settings, metrics: Metrics) -> HaproxyRefusals | None:
    addresses = proxy_runtime_apis(settings.proxy_runtime_api)
    if not addresses:
        return None
    return HaproxyRefusals(addresses, settings.proxy_refusal_table, metrics.proxy_refusals)


def _api_key_admin(
    settings: Settings,
    guards: Protection,
    core: Core | None,
    authenticator: RevocableAuthenticator,
    revocations: KeyRevocations | None,
    refusals: HaproxyRefusals | None,
) -> ApiKeyAdmin | None:
    if core is None:
        return None
    from keel.api.rest.api_versions import NEWEST_VERSION, SUPPORTED_VERSIONS

    async def key_changed(key_id: str) -> None:
        # This process at once; the others through the push (without Redis: their key cache's
        # TTL, as for a revocation from the CLI).
        authenticator.forget_key(key_id)
        if refusals is not None:  # the proxy in front refuses on the old terms no longer
            refusals.forgive(key_id)
        if revocations is not None:
            await revocations.publish(key_id)

    return ApiKeyAdmin(
        core.store,
        core.clock,
        plans=guards.catalog.plans,
        default_plan=settings.ratelimit_default_plan,
        api_versions=SUPPORTED_VERSIONS,
        newest_version=NEWEST_VERSION,
        on_changed=key_changed,
        event_source=settings.events_source,
    )


def _persisted_queries(settings: Settings) -> FleetQueries | None:
    if settings.redis_url is None or settings.graphql_persisted_queries <= 0:
        return None
    from keel.cache.redis_queries import RedisPersistedQueries

    return RedisPersistedQueries.from_url(settings.redis_url)


def _key_revocations(settings: Settings) -> KeyRevocations | None:
    if settings.redis_url is None:
        return None
    from keel.cache.redis_key_revocations import RedisKeyRevocations

    return RedisKeyRevocations.from_url(settings.redis_url)
