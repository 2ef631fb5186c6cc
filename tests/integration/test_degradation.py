"""Graceful degradation against a real PostgreSQL behind the fault proxy, and cache
invalidation across two Keel instances over a real Redis.

No test waits out a period: the breakers read a clock the test advances, and the rest waits on
what it can observe (a subscription counted by Redis, a version read back), bounded only
against a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from testkit.faultproxy import FaultProxy, Faults

from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import build_services
from keel.cache.redis_bus import CHANNEL
from keel.config import Settings
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import CircuitOpen, DeadlineExceeded, Unavailable
from keel.domain.profile import JSONValue
from keel.resilience.breaker import BreakerState
from keel.resilience.deadline import deadline_in
from tests.integration.conftest import truncate

WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
DOC: JSONValue = {"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": True}]}
BREAKER_OPEN_SECONDS = 0.5
# Bounds a hang only (a call its deadline failed to cut waits on a blackhole forever): never
# what a test measures.
HANG_SECONDS = 30.0


class SteppedClock:
    """A monotonic clock in seconds that moves only when the test moves it."""

    def __init__(self) -> None:
        self.seconds = 1_000.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until `condition` holds, checked again after each turn of the loop; fails after
    HANG_SECONDS, which only bounds a hang."""
    try:
        async with asyncio.timeout(HANG_SECONDS):
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


@pytest.fixture
async def proxy(migrated_postgres_url: str) -> AsyncIterator[FaultProxy]:
    await truncate(migrated_postgres_url)
    target = urlsplit(migrated_postgres_url)
    assert target.hostname is not None
    assert target.port is not None
    fault_proxy = FaultProxy(target.hostname, target.port, seed=3)
    await fault_proxy.start()
    yield fault_proxy
    await fault_proxy.stop()


def through(url: str, proxy: FaultProxy) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()


@pytest.fixture
def resilience_clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
async def keel(
    migrated_postgres_url: str, proxy: FaultProxy, resilience_clock: SteppedClock
) -> AsyncIterator[Services]:
    built = await build_services(
        Settings(
            database_url=through(migrated_postgres_url, proxy),
            db_timeout_seconds=0.3,
            db_breaker_open_seconds=BREAKER_OPEN_SECONDS,
            cache_fresh_seconds=0.0,  # every read goes to the database while it answers
            ratelimit_enabled=False,
        ),
        resilience_clock=resilience_clock,
    )
    yield built
    await built.close()


def pool_in_use(keel: Services) -> float | None:
    value: float | None = keel.metrics.registry.get_sample_value("keel_db_pool_connections_in_use")
    return value


def database_breaker(keel: Services) -> BreakerState:
    return keel.breakers["database"].state


async def test_a_blackholed_database_costs_callers_their_deadline_at_most(
    keel: Services, proxy: FaultProxy, resilience_clock: SteppedClock
) -> None:
    cached = (await keel.profiles.create_profile(WRITER, DOC)).profile
    await keel.profiles.read_profile(WRITER, cached.id)
    proxy.set_faults(Faults(blackhole=True))

    async with asyncio.timeout(HANG_SECONDS):
        # Each caller gets an answer by its deadline (the database's 0.3 s, inside the
        # request's 1 s): a stale copy, or the deadline's own error, never a wait on the hole.
        with deadline_in(1.0):
            read = await keel.profiles.read_profile(WRITER, cached.id)
        assert read.stale
        assert read.profile.version == cached.version
        with deadline_in(1.0), pytest.raises(DeadlineExceeded):
            await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Lost?"})
        with deadline_in(1.0), pytest.raises(Unavailable) as refused:
            await keel.profiles.create_profile(
                WRITER, {"handle": "other", "emails": [{"address": "o@example.com", "primary": True}]}
            )
    # Cut by its deadline, or refused at once by the breaker the failures before it opened.
    assert isinstance(refused.value, DeadlineExceeded | CircuitOpen), refused.value
    assert database_breaker(keel) is BreakerState.OPEN
    with pytest.raises(CircuitOpen):  # refused without waiting on the database
        await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Lost?"})

    proxy.clear()
    with pytest.raises(CircuitOpen):  # the database is back, but the open period is not over
        await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Lost?"})
    resilience_clock.advance(BREAKER_OPEN_SECONDS)  # the breaker lets a probe through
    updated = await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Back"})
    assert updated.version == cached.version + 1  # the failed writes left nothing behind
    assert database_breaker(keel) is BreakerState.CLOSED
    assert pool_in_use(keel) == 0


async def test_a_slow_database_is_cut_at_the_deadline_and_its_connections_come_back(
    keel: Services, proxy: FaultProxy, resilience_clock: SteppedClock
) -> None:
    created = (await keel.profiles.create_profile(WRITER, DOC)).profile
    proxy.set_faults(Faults(latency_ms=400))
    async with asyncio.timeout(HANG_SECONDS):
        for _ in range(3):
            # Every write is slowed past the database timeout (0.3 s) and cut there, inside the
            # request's 5 s: the deadline's error, not an open breaker refusing without trying
            # (CircuitOpen) and not a write that waited for the slow answer (no error at all).
            with pytest.raises(DeadlineExceeded), deadline_in(5.0):
                await keel.profiles.update_profile(WRITER, created.id, {"display_name": "Slow"})
    assert database_breaker(keel) is BreakerState.OPEN  # three cut in a row
    proxy.clear()
    resilience_clock.advance(BREAKER_OPEN_SECONDS)
    for _ in range(2 * keel.settings.db_pool_max):  # more than the pool's connections: none is stuck
        await keel.profiles.read_profile(WRITER, created.id)
    assert database_breaker(keel) is BreakerState.CLOSED
    assert pool_in_use(keel) == 0
    assert (await keel.profiles.read_profile(WRITER, created.id)).profile.version == created.version


async def test_background_passes_cut_by_the_timeout_do_not_refuse_requests(
    keel: Services, proxy: FaultProxy
) -> None:
    # A background pass is several queries in one unit of work: slowed past the database
    # timeout, it fails, and after three (the dispatcher's, the two purges') the breaker
    # refuses... background work only. Requests
    # have a breaker of their own (found by chaos experiment 05: the dispatcher's and the
    # erasure runner's timeouts opened the one breaker, and reads were served stale).
    dispatcher, idempotency, deleted = (
        keel.local.dispatcher,
        keel.local.idempotency_purge,
        keel.local.deleted_purge,
    )
    assert dispatcher is not None
    assert idempotency is not None
    assert deleted is not None
    proxy.set_faults(Faults(latency_ms=400))
    async with asyncio.timeout(HANG_SECONDS):
        await dispatcher.run_once()  # logs its failure and carries on, as between polls
        # The housekeeping purges too: one failure each on the same breaker.
        with pytest.raises(DeadlineExceeded):
            await idempotency.purge_expired_idempotency_records()
        with pytest.raises(DeadlineExceeded):
            await deleted.purge_deleted_profiles()
    assert keel.breakers["database_jobs"].state is BreakerState.OPEN
    assert database_breaker(keel) is BreakerState.CLOSED
    with pytest.raises(CircuitOpen):
        async with dispatcher.store.unit_of_work():
            pass
    proxy.clear()
    created = (await keel.profiles.create_profile(WRITER, DOC)).profile
    assert (await keel.profiles.read_profile(WRITER, created.id)).profile.version == created.version


async def test_a_write_in_one_process_invalidates_the_others_copy(
    migrated_postgres_url: str, redis_url: str
) -> None:
    await truncate(migrated_postgres_url)
    settings = Settings(
        database_url=migrated_postgres_url,
        redis_url=redis_url,
        cache_fresh_seconds=60.0,  # only an invalidation can make the other copy go
        ratelimit_enabled=False,
    )
    redis = Redis.from_url(redis_url)
    first, second = await build_services(settings), await build_services(settings)

    async def subscribers() -> int:
        counts = await redis.pubsub_numsub(CHANNEL)
        return counts[0][1]

    already = await subscribers()
    listeners = [asyncio.create_task(k.local.reads.listen()) for k in (first, second)]

    def hits() -> float | None:
        value: float | None = second.metrics.registry.get_sample_value(
            "keel_profile_cache_lookups_total", {"outcome": "hit"}
        )
        return value

    try:
        await eventually(lambda: _at_least(subscribers(), already + 2), "both processes subscribed")
        created = (await first.profiles.create_profile(WRITER, DOC)).profile
        assert (await second.profiles.read_profile(WRITER, created.id)).profile.version == 1  # now cached
        hits_before = hits() or 0.0
        assert (await second.profiles.read_profile(WRITER, created.id)).profile.version == 1
        assert hits() == hits_before + 1  # from its cache
        await first.profiles.update_profile(WRITER, created.id, {"display_name": "New"})

        async def second_reads_the_new_version() -> bool:
            read = await second.profiles.read_profile(WRITER, created.id)
            return read.profile.version == 2

        await eventually(second_reads_the_new_version, "the invalidation reached the other process")
        assert (await second.profiles.read_profile(WRITER, created.id)).profile.fields.display_name == "New"
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await first.close()
        await second.close()
        await redis.aclose()


async def _at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum
