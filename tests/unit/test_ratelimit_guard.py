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

    async def acquire(self, client: str, plan: Plan, cost: int) -> Decision:
        await self.release.wait()
        return await super().acquire(client, plan, cost)


async def test_a_cancelled_decision_gives_its_slot_back() -> None:
    limiter = StuckLimiter()
    guard = RateLimitGuard(limiter, Metrics())
    pending = asyncio.create_task(guard.admit("c", PLAN, 1))
    await asyncio.sleep(0.01)
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
