"""The guard's bookkeeping: the per-client concurrency slot is given back however a decision
ends, including by cancellation."""

from __future__ import annotations

import asyncio

import pytest

from keel.observability.metrics import Metrics
from keel.ratelimit.gcra import Decision
from keel.ratelimit.guard import RateLimitGuard
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.policy import Plan, Policy

PLAN = Plan("p", (Policy("s", quota=100, window_seconds=1, burst=100),), concurrency=1)


class StuckLimiter(InMemoryRateLimiter):
    """Decides only when released: stands for a Redis call in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.deciding = asyncio.Event()

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        self.deciding.set()
        await self.release.wait()
        return await super().acquire(client, plan, cost, slot)


async def test_a_cancelled_decision_gives_its_slot_back() -> None:
    limiter = StuckLimiter()
    guard = RateLimitGuard(limiter, Metrics())
    pending = asyncio.create_task(guard.admit("c", PLAN, 1))
    await limiter.deciding.wait()
    assert not (await guard.admit("c", PLAN, 1)).allowed  # the slot is taken while deciding
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    limiter.release.set()
    outcome = await guard.admit("c", PLAN, 1)
    assert outcome.allowed
    guard.release("c")


async def test_a_refusal_gives_its_slot_back() -> None:
    guard = RateLimitGuard(InMemoryRateLimiter(), Metrics())
    tight = Plan("t", (Policy("s", quota=1, window_seconds=60, burst=1),), concurrency=1)
    first = await guard.admit("c", tight, 1)
    assert first.allowed
    guard.release("c")
    refused = await guard.admit("c", tight, 1)
    assert not refused.allowed
    assert refused.violated_policies == ["s"]
    assert (await guard.admit("c", tight, 1)).violated_policies == ["s"]  # not "concurrency"


class SwitchableLimiter(InMemoryRateLimiter):
    """The kill switch as a shared limiter keeps it: known for a while after each read."""

    def __init__(self) -> None:
        super().__init__()
        self.thrown = False
        self.fresh = True

    async def switched_off(self) -> bool:
        self.fresh = True
        return self.thrown

    def switched_off_seen(self) -> bool | None:
        return self.thrown if self.fresh else None


async def test_known_refusals_are_the_ones_admit_would_give_without_asking_the_limiter() -> None:
    limiter = SwitchableLimiter()
    guard = RateLimitGuard(limiter, Metrics())
    tight = Plan("t", (Policy("s", quota=1, window_seconds=60, burst=2),), concurrency=1)
    assert guard.known_refusal("c", tight, 1) is None  # nothing known yet: only the limiter can tell
    assert (await guard.admit("c", tight, 2)).allowed
    assert guard.known_refusal("c", tight, 1) is not None  # over the concurrency cap
    guard.release("c")
    assert guard.known_refusal("c", tight, 1) is None  # a slot, and no refusal remembered yet
    refused = await guard.admit("c", tight, 1)
    assert not refused.allowed
    known = guard.known_refusal("c", tight, 1)
    assert known is not None
    assert not known.allowed
    assert known.violated_policies == ["s"]
    assert known.retry_after_seconds == refused.retry_after_seconds
    assert guard.known_refusal("other", tight, 1) is None
    limiter.fresh = False  # the switch is due to be re-read: that is admit's job
    assert guard.known_refusal("c", tight, 1) is None
    limiter.fresh = limiter.thrown = True
    assert guard.known_refusal("c", tight, 1) is None  # the switch is thrown: nothing is refused


async def test_a_refusal_remembered_under_one_plan_is_not_applied_under_another() -> None:
    """An admin changed the key's plan: the new one is the limiter's to apply from the next
    request, not the refusal this process remembers from the old one."""
    guard = RateLimitGuard(InMemoryRateLimiter(), Metrics())
    tight = Plan("t", (Policy("s", quota=1, window_seconds=60, burst=2),), concurrency=4)
    roomy = Plan("r", (Policy("big", quota=100, window_seconds=1, burst=100),), concurrency=4)
    assert (await guard.admit("c", tight, 2)).allowed
    guard.release("c")
    assert not (await guard.admit("c", tight, 1)).allowed
    assert guard.known_refusal("c", tight, 1) is not None
    assert guard.known_refusal("c", roomy, 1) is None
    assert (await guard.admit("c", roomy, 1)).allowed


async def test_the_kill_switch_seen_thrown_is_told_once_per_throw() -> None:
    """What clears the proxy's refusals (`HaproxyRefusals.forgive_all`) when limits go off."""
    limiter = SwitchableLimiter()
    guard = RateLimitGuard(limiter, Metrics())
    thrown: list[bool] = []
    guard.on_switched_off = lambda: thrown.append(True)
    for _ in range(2):
        outcome = await guard.admit("c", PLAN, 1)
        guard.release("c")
        assert outcome.allowed
    assert thrown == []
    limiter.thrown = True
    for _ in range(3):
        await guard.admit("c", PLAN, 1)
        guard.release("c")
    assert thrown == [True]
    limiter.thrown = False
    await guard.admit("c", PLAN, 1)
    guard.release("c")
    limiter.thrown = True
    await guard.admit("c", PLAN, 1)
    guard.release("c")
    assert thrown == [True, True]
