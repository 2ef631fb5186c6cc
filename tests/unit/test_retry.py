"""Deadlines, backoff and the retry budget."""

from __future__ import annotations

import asyncio
import random

import pytest

from keel.domain.errors import Unavailable
from keel.resilience.deadline import call_deadline, deadline_in, detached_deadline, remaining
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy


async def test_a_deadline_only_ever_tightens() -> None:
    assert remaining() is None
    with deadline_in(1.0) as outer:
        with deadline_in(10.0) as inner:
            assert inner == outer
        with deadline_in(0.1) as inner:
            assert inner < outer
            assert call_deadline(5.0) == inner
        left = remaining()
        assert left is not None
        assert 0.5 < left <= 1.0
    assert remaining() is None


async def test_a_detached_deadline_ignores_the_spent_request_deadline() -> None:
    with deadline_in(0.0):
        with detached_deadline(2.0):
            left = remaining()
            assert left is not None
            assert left > 1.0
        spent = remaining()
        assert spent is not None
        assert spent <= 0


async def test_a_dependency_call_gets_its_own_timeout_when_the_request_has_more() -> None:
    loop = asyncio.get_running_loop()
    with deadline_in(30.0):
        assert call_deadline(1.0) - loop.time() <= 1.0


def test_full_jitter_stays_within_the_capped_exponential() -> None:
    backoff = Backoff(base_seconds=0.01, cap_seconds=0.1, rng=random.Random(7))
    for attempt in range(1, 12):
        delays = [backoff.delay(attempt) for _ in range(200)]
        ceiling = min(0.1, 0.01 * 2**attempt)
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered over the whole range, not a fixed wait


def test_the_budget_bounds_retries_to_a_share_of_first_attempts() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.2, floor_per_second=1.0, cap=10.0, clock=lambda: now[0])
    retries = 0
    for _ in range(1000):  # 1,000 requests in 10 s, every one failing and wanting a retry
        now[0] += 0.01
        budget.deposit()
        retries += budget.try_withdraw()
    # 20 % of 1,000 first attempts plus the floor's 10 retries over 10 s.
    assert 190 <= retries <= 210


def test_a_quiet_period_cannot_save_up_a_storm() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.2, floor_per_second=1.0, cap=10.0, clock=lambda: now[0])
    now[0] += 3600
    assert sum(budget.try_withdraw() for _ in range(100)) == 10


async def test_retries_stop_when_the_budget_is_spent() -> None:
    outcomes: list[str] = []
    policy = RetryPolicy(
        RetryBudget(ratio=0.0, floor_per_second=0.0, cap=0.0),
        Backoff(base_seconds=0.0),
        max_attempts=5,
        on_retry=outcomes.append,
    )
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        await policy.run(failing, retryable=lambda e: True)
    assert calls == 1
    assert outcomes == ["budget_exhausted"]


async def test_only_retryable_errors_are_retried_and_success_ends_it() -> None:
    policy = RetryPolicy(RetryBudget(ratio=1.0, cap=10.0), Backoff(base_seconds=0.0), max_attempts=3)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise Unavailable("blip")
        return "ok"

    for _ in range(5):
        policy.budget.deposit()
    assert await policy.run(flaky, retryable=lambda e: isinstance(e, Unavailable)) == "ok"
    assert attempts == 3

    async def broken() -> str:
        raise ValueError("not transient")

    with pytest.raises(ValueError, match="not transient"):
        await policy.run(broken, retryable=lambda e: isinstance(e, Unavailable))


async def test_no_retry_waits_past_the_deadline() -> None:
    outcomes: list[str] = []
    policy = RetryPolicy(
        RetryBudget(ratio=1.0, cap=10.0),
        Backoff(base_seconds=10.0, cap_seconds=10.0, rng=random.Random(1)),
        on_retry=outcomes.append,
    )

    async def failing() -> None:
        raise Unavailable("down")

    with deadline_in(0.05), pytest.raises(Unavailable):
        await policy.run(failing, retryable=lambda e: True)
    assert outcomes == ["deadline"]
