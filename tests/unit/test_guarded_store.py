"""The database behind a deadline and a breaker."""

from __future__ import annotations

import asyncio

import pytest

from keel.domain.errors import CircuitOpen, DeadlineExceeded, NotFound, Unavailable
from keel.resilience.breaker import BreakerState, CircuitBreaker
from keel.resilience.deadline import deadline_in
from keel.storage.guarded import GuardedStore
from tests.unit.test_profile_reads import Database


def guarded(db: Database, *, timeout: float = 1.0) -> GuardedStore:
    breaker = CircuitBreaker("database", consecutive_failures=3, open_seconds=30.0)
    return GuardedStore(db, breaker, timeout_seconds=timeout)


async def test_a_unit_of_work_cannot_outlive_the_request_deadline() -> None:
    db = Database()
    db.read_delay = 5.0
    store = guarded(db, timeout=10.0)
    # Cut by the 0.1 s deadline: the database timeout (10 s) would have let the 5 s read end
    # without an error.
    with deadline_in(0.1), pytest.raises(DeadlineExceeded):
        async with store.unit_of_work(read_only=True) as uow:
            await uow.profiles.get("x")


async def test_the_database_timeout_applies_when_the_request_has_more_time() -> None:
    db = Database()
    store = guarded(db, timeout=0.05)
    with deadline_in(30.0), pytest.raises(DeadlineExceeded):
        async with store.unit_of_work(read_only=True):
            await asyncio.sleep(5)


async def test_failures_open_the_breaker_and_then_calls_fail_without_trying() -> None:
    db = Database()
    store = guarded(db)
    db.down = True
    for _ in range(3):
        with pytest.raises(Unavailable) as raised:
            async with store.unit_of_work():
                pass
        assert not isinstance(raised.value, CircuitOpen)
    assert store.breaker.state is BreakerState.OPEN
    db.down = False  # back, but the breaker does not know yet
    with pytest.raises(CircuitOpen) as refused:
        async with store.unit_of_work():
            pass
    assert refused.value.retry_after >= 29


async def test_domain_errors_are_answers_not_failures() -> None:
    db = Database()
    store = guarded(db)
    for _ in range(5):
        with pytest.raises(NotFound):
            async with store.unit_of_work():
                raise NotFound("no such profile")
    assert store.breaker.state is BreakerState.CLOSED


async def test_a_caller_going_away_is_no_verdict_on_the_database() -> None:
    db = Database()
    db.gate = asyncio.Event()  # never set: every read is in flight when its caller goes away
    store = guarded(db)

    async def read() -> None:
        async with store.unit_of_work(read_only=True):
            pass

    for _ in range(5):
        db.entered.clear()
        task = asyncio.create_task(read())
        await db.entered.wait()  # let through by the breaker, waiting on the database
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert store.breaker.state is BreakerState.CLOSED
