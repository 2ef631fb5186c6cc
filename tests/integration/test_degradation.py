"""Graceful degradation against a real PostgreSQL behind the fault proxy, and cache
invalidation across two Keel instances over a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from testkit.faultproxy import FaultProxy, Faults

from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import build_services
from keel.config import Settings
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import CircuitOpen, Unavailable
from keel.resilience.breaker import BreakerState
from keel.resilience.deadline import deadline_in
from tests.integration.conftest import truncate

WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
DOC = {"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": True}]}


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
async def keel(migrated_postgres_url: str, proxy: FaultProxy) -> AsyncIterator[Services]:
    built = await build_services(
        Settings(
            database_url=through(migrated_postgres_url, proxy),
            db_timeout_seconds=0.3,
            db_breaker_open_seconds=0.5,
            cache_fresh_seconds=0.0,  # every read goes to the database while it answers
            ratelimit_enabled=False,
        )
    )
    yield built
    await built.close()


async def test_a_blackholed_database_costs_callers_their_deadline_at_most(
    keel: Services, proxy: FaultProxy
) -> None:
    cached = (await keel.profiles.create_profile(WRITER, DOC)).profile
    await keel.profiles.get_profile(WRITER, cached.id)
    loop = asyncio.get_running_loop()
    proxy.set_faults(Faults(blackhole=True))

    started = loop.time()
    with deadline_in(1.0):
        read = await keel.profiles.read_profile(WRITER, cached.id)
    assert read.stale
    assert read.profile.version == cached.version
    with deadline_in(1.0), pytest.raises(Unavailable):
        await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Lost?"})
    with deadline_in(1.0), pytest.raises(Unavailable):
        await keel.profiles.create_profile(
            WRITER, {"handle": "other", "emails": [{"address": "o@example.com", "primary": True}]}
        )
    assert loop.time() - started < 3 * (0.3 + 0.2)

    breaker = keel.breakers["database"]
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):  # refused without waiting on the database
        await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Lost?"})

    proxy.clear()
    await asyncio.sleep(0.6)  # the breaker lets a probe through
    updated = await keel.profiles.update_profile(WRITER, cached.id, {"display_name": "Back"})
    assert updated.version == cached.version + 1  # the failed writes left nothing behind
    assert breaker.state is BreakerState.CLOSED
    assert keel.metrics.db_pool_in_use.collect()[0].samples[0].value == 0


async def test_a_slow_database_is_cut_at_the_deadline_and_its_connections_come_back(
    keel: Services, proxy: FaultProxy
) -> None:
    created = (await keel.profiles.create_profile(WRITER, DOC)).profile
    proxy.set_faults(Faults(latency_ms=400))
    loop = asyncio.get_running_loop()
    for _ in range(3):
        started = loop.time()
        # Every write is slowed past the database timeout and cut there: it must fail, and by
        # the timeout, not by an open breaker refusing it without trying.
        with pytest.raises(Unavailable) as cut, deadline_in(5.0):
            await keel.profiles.update_profile(WRITER, created.id, {"display_name": "Slow"})
        assert not isinstance(cut.value, CircuitOpen)
        assert loop.time() - started < 0.3 + 0.2
    proxy.clear()
    await asyncio.sleep(0.6)
    for _ in range(20):  # more than the pool's connections: none is stuck
        await keel.profiles.get_profile(WRITER, created.id)


async def test_a_write_in_one_process_invalidates_the_others_copy(
    migrated_postgres_url: str, redis_url: str
) -> None:
    await truncate(migrated_postgres_url)
    settings = Settings(
        database_url=migrated_postgres_url,
        redis_url=redis_url,
        cache_fresh_seconds=60.0,
        ratelimit_enabled=False,
    )
    first, second = await build_services(settings), await build_services(settings)
    listeners = [asyncio.create_task(k.local.reads.listen()) for k in (first, second)]
    try:
        await asyncio.sleep(0.2)  # subscribed
        created = (await first.profiles.create_profile(WRITER, DOC)).profile
        assert (await second.profiles.get_profile(WRITER, created.id)).version == 1  # now cached
        await first.profiles.update_profile(WRITER, created.id, {"display_name": "New"})
        for _ in range(50):
            if (await second.profiles.get_profile(WRITER, created.id)).version == 2:
                break
            await asyncio.sleep(0.02)
        assert (await second.profiles.get_profile(WRITER, created.id)).fields.display_name == "New"
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await first.close()
        await second.close()
