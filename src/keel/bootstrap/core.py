"""A core: the service over its own database (refusing an unmigrated one), with the profile cache
and the key lookups."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from keel.bootstrap.container import Core
from keel.bootstrap.events import build_relay
from keel.bootstrap.personal_data import build_personal_data
from keel.bootstrap.protection import Protection, build_breaker
from keel.bootstrap.webhooks import build_webhooks
from keel.config import Settings
from keel.observability.database import DatabaseObserver
from keel.observability.metrics import Metrics
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy
from keel.service.attributes import AttributePolicy
from keel.service.auth import Authenticator
from keel.service.clock import SystemClock
from keel.service.end_users import Credentials, EndUserProfiles, EndUserRules, EndUserTokens
from keel.service.housekeeping import IdempotencyRecordsPurge
from keel.service.pagination import Cursors
from keel.service.ports import InvalidationBus, Store
from keel.service.profile_reads import CachePolicy, ProfileReads
from keel.service.profiles import ProfileService
from keel.storage.layout_gauges import ReadsLayout, watch_layout
from keel.storage.layouts import Layout, LayoutRecord, check_layout
from keel.storage.migrations.head import HEAD_REVISION

if TYPE_CHECKING:
    from keel.storage.guarded import GuardedStore
    from keel.storage.postgres.store import PostgresStore
    from keel.storage.sqlite.store import SqliteStore


class SchemaNotCurrent(RuntimeError):
    """The database has not been migrated to the revision this code needs."""


async def open_store(settings: Settings, observer: DatabaseObserver) -> Store:
    """The configured database, its profiles in the configured layout; `LayoutMismatch` if the
    database records the other one (then nothing is left open)."""
    store = await _open_sql_store(settings, observer, node_id=serving_node_id())
    try:
        check_layout(
            await store.layout_record(), Layout(settings.storage_layout), settings.redacted_database_url()
        )
    except BaseException:
        await store.close()
        raise
    return store


async def recorded_layout(settings: Settings, observer: DatabaseObserver) -> LayoutRecord | None:
    """What the configured database records of its profiles' layout, whatever the node's own
    configuration says (`keel layout status`); None before the layouts' revision."""
    store = await _open_sql_store(settings, observer)
    try:
        return await store.layout_record()
    finally:
        await store.close()


def serving_node_id() -> str:
    """How a serving process names itself in `storage_layout_nodes` (`keel layout status`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def open_unregistered_store(
    settings: Settings, observer: DatabaseObserver
) -> PostgresStore | SqliteStore:
    """The configured database for a command that serves nothing (the layout migrator): it
    follows the layout record but is not a node any migration waits on."""
    return await _open_sql_store(settings, observer, node_id=None)


@contextlib.asynccontextmanager
async def operator_store(settings: Settings) -> AsyncIterator[PostgresStore | SqliteStore]:
    """The configured database for an operator's command (`keel layout`, `keel residency`):
    registered as no serving node, its spans exported nowhere; closed at the end."""
    from keel.observability.tracing import build_tracer_provider, tracer_from

    provider = build_tracer_provider(
        exporter="none", sampling_ratio=0.0, otlp_endpoint=None, service_name=settings.service_name
    )
    observer = DatabaseObserver(
        Metrics(), tracer_from(provider), "postgresql" if settings.uses_postgres else "sqlite"
    )
    store = await open_unregistered_store(settings, observer)
    try:
        yield store
    finally:
        await store.close()


async def _open_sql_store(
    settings: Settings, observer: DatabaseObserver, *, node_id: str | None = None
) -> PostgresStore | SqliteStore:
    layout = Layout(settings.storage_layout)
    if settings.uses_postgres:
        from keel.storage.postgres.store import PostgresStore

        return await PostgresStore.open(
            settings.database_url,
            observer,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout_seconds,
            acquire_timeout=settings.db_acquire_timeout_seconds,
            layout=layout,
            node_id=node_id,
            replica_urls=settings.replica_urls if node_id is not None else (),
            replica_max_lag_seconds=settings.replica_max_lag_seconds,
        )
    from keel.storage.sqlite.store import SqliteStore

    return await SqliteStore.open(
        settings.sqlite_path,
        observer,
        acquire_timeout=settings.db_acquire_timeout_seconds,
        layout=layout,
        node_id=node_id,
    )


def guard_store(
    store: Store, settings: Settings, metrics: Metrics, guards: Protection, *, breaker: str = "database"
) -> GuardedStore:
    """Deadline and circuit breaker around every unit of work (see `keel.storage.guarded`).
    Requests and background jobs (relay, webhook dispatcher, erasure runner, purges) each get a breaker
    of their own over the same store: a background pass is many queries in one unit of work, and
    its timing out must not refuse requests (it did, under 200 ms round trips, in chaos
    experiment 05); a database that is down opens both, each from its own failures."""
    from keel.storage.guarded import GuardedStore

    guards.breakers[breaker] = build_breaker(
        breaker, metrics, clock=guards.resilience_clock, open_seconds=settings.db_breaker_open_seconds
    )
    return GuardedStore(store, guards.breakers[breaker], timeout_seconds=settings.db_timeout_seconds)


def build_profile_reads(
    settings: Settings, store: Store, metrics: Metrics, guards: Protection
) -> tuple[ProfileReads, InvalidationBus | None]:
    """Reads through the in-process cache, invalidated across processes over Redis when set."""
    retries = metrics.dependency_retries
    retry = RetryPolicy(
        RetryBudget(ratio=settings.retry_budget_ratio, clock=guards.resilience_clock),
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
    expected = HEAD_REVISION
    if applied != expected:
        raise SchemaNotCurrent(
            f"The database {settings.redacted_database_url()} is at schema revision {applied or 'none'},"
            f" this Keel needs {expected}. Run `keel migrate` first."
        )


StoreOpener = Callable[[Settings, DatabaseObserver], Awaitable[Store]]


@runtime_checkable
class WatchesReplicas(Protocol):
    """A store with read replicas to follow (PostgreSQL's)."""

    async def watch_replicas(self) -> None: ...


async def build_core(
    settings: Settings, metrics: Metrics, guards: Protection, *, store_opener: StoreOpener = open_store
) -> Core:
    """The service over its own database, refusing an unmigrated one. `store_opener`: how the
    store is opened (tests may hand in an in-memory one)."""
    _check_end_user_settings(settings, guards)
    policy = (
        AttributePolicy.from_file(settings.attribute_schema)
        if settings.attribute_schema is not None
        else AttributePolicy()
    )
    observer = DatabaseObserver(metrics, guards.tracer, "postgresql" if settings.uses_postgres else "sqlite")
    store = await store_opener(settings, observer)
    try:
        await check_schema(store, settings)
    except BaseException:
        await store.close()
        raise
    clock = SystemClock()
    layout_watch = functools.partial(watch_layout, store, metrics) if isinstance(store, ReadsLayout) else None
    replica_watch = store.watch_replicas if isinstance(store, WatchesReplicas) else None
    guarded = guard_store(store, settings, metrics, guards)
    jobs = guard_store(store, settings, metrics, guards, breaker="database_jobs")
    store = guarded
    reads, bus = build_profile_reads(settings, store, metrics, guards)
    relay = build_relay(settings, jobs, clock, metrics, guards.tracer)
    webhooks = build_webhooks(settings, store, clock, metrics, tracer=guards.tracer, jobs=jobs)

    def events_committed() -> None:
        # Wakes this process's relay and webhook dispatcher at once, instead of at their next poll.
        if relay is not None:
            relay.wake()
        webhooks.dispatcher.wake()

    service = ProfileService(
        store,
        clock,
        policy,
        settings.region,
        reads=reads,
        idempotency_lease=timedelta(seconds=settings.idempotency_lease_seconds),
        cursors=Cursors(settings.cursor_key()),
        event_source=settings.events_source,
        on_events_committed=events_committed,
    )
    authenticator = Authenticator(store, ttl=settings.api_key_cache_seconds, clock=clock)
    end_users = (
        EndUserProfiles(
            store,
            service,
            policy,
            clock,
            issuer=settings.oidc_issuer,
            rules=EndUserRules(settings.end_user_handle_changes, settings.end_user_email_changes),
            event_source=settings.events_source,
        )
        if settings.oidc_issuer is not None
        else None
    )
    stream = relay.publisher if relay is not None else None
    personal_data, erasure_runner, deleted_purge = build_personal_data(
        settings, guarded, clock, reads, events_committed, stream, jobs=jobs
    )
    return Core(
        store=store,
        clock=clock,
        service=service,
        authenticator=authenticator,
        credentials=Credentials(
            authenticator,
            _end_user_tokens(settings),
            plan=settings.oidc_plan,
            api_version=settings.end_user_api_version,
        ),
        end_users=end_users,
        reads=reads,
        invalidation_bus=bus,
        expected_schema_revision=HEAD_REVISION,
        relay=relay,
        webhooks=webhooks.admin,
        dispatcher=webhooks.dispatcher,
        personal_data=personal_data,
        erasure_runner=erasure_runner,
        idempotency_purge=IdempotencyRecordsPurge(jobs, clock),
        deleted_purge=deleted_purge,
        layout_watch=layout_watch,
        replica_watch=replica_watch,
    )


def _end_user_tokens(settings: Settings) -> EndUserTokens | None:
    """The check of end users' access tokens (imported only when configured: PyJWT and httpx
    are not on a serving process's start-up path otherwise)."""
    if settings.oidc_issuer is None or settings.oidc_audience is None or settings.oidc_jwks_url is None:
        return None
    from keel.oidc.tokens import JwksTokens, http_fetch

    return JwksTokens(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        fetch=http_fetch(settings.oidc_jwks_url),
        algorithms=settings.oidc_algorithms,
        leeway_seconds=settings.oidc_leeway_seconds,
        cache_seconds=settings.oidc_jwks_cache_seconds,
        refetch_seconds=settings.oidc_jwks_refetch_seconds,
        access_tokens_only=settings.oidc_access_tokens_only,
    )


def _check_end_user_settings(settings: Settings, guards: Protection) -> None:
    """What the settings alone cannot check: the end users' plan and API version exist."""
    if not settings.end_users_enabled:
        return
    from keel.api.rest.api_versions import SUPPORTED_VERSIONS

    if settings.oidc_plan not in guards.catalog.plans:
        known = ", ".join(guards.catalog.plans)
        raise ValueError(
            f"KEEL_OIDC_PLAN: rate-limit plan {settings.oidc_plan!r} is not configured ({known})"
        )
    if settings.end_user_api_version not in SUPPORTED_VERSIONS:
        known = ", ".join(sorted(SUPPORTED_VERSIONS))
        raise ValueError(f"KEEL_END_USER_API_VERSION must be one of {known}")
