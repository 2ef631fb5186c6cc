"""Failing open, but bounded: when the shared limiter (Redis) fails or is slow, decisions move
to an in-process limiter whose quotas are the plan's divided by the number of Keel processes
(`nodes`: the live count of `keel.ratelimit.membership` as last seen before the outage), so the
fleet as a whole still admits about one quota. A circuit breaker keeps Redis out of the request
path for a few seconds after errors, and probes it to come back by itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from keel.ratelimit.gcra import Decision
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.policy import Plan
from keel.ratelimit.ports import LimiterUnavailable, RateLimiter
from keel.resilience.breaker import BreakerState, CircuitBreaker

FallbackObserver = Callable[[str], None]  # called with the reason of each local decision


class FailOpenRateLimiter:
    def __init__(
        self,
        shared: RateLimiter,
        *,
        local: InMemoryRateLimiter,
        breaker: CircuitBreaker,
        nodes: Callable[[], int],
        on_fallback: FallbackObserver,
        minimum_burst: int = 1,
    ) -> None:
        self._shared = shared
        self._local = local
        self._breaker = breaker
        self._nodes = nodes
        self._on_fallback = on_fallback
        self._minimum_burst = minimum_burst
        self._local_plans: dict[tuple[int, int], Plan] = {}

    async def switched_off(self) -> bool:
        if self._breaker.state is BreakerState.OPEN:
            return False  # Redis is out of the path: the local limiter decides, switch or not
        return await self._shared.switched_off()

    def switched_off_seen(self) -> bool | None:
        if self._breaker.state is BreakerState.OPEN:
            return False
        return self._shared.switched_off_seen()

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        if self._breaker.allow():
            try:
                decision = await self._shared.acquire(client, plan, cost, slot)
            except LimiterUnavailable as error:
                self._breaker.record_failure()
                self._on_fallback(str(error))
            except BaseException:
                # Cancelled mid-call: no verdict on Redis, but the probe slot must not stay taken.
                self._breaker.release_probe()
                raise
            else:
                self._breaker.record_success()
                return decision
        else:
            self._on_fallback("breaker_open")
        # Decided here: no fleet-wide slot is taken; the guard's own count caps this process.
        share = self._local_plan(plan)
        local = self._local.acquire_now(client, share, cost)
        return dataclasses.replace(local, degraded=True, plan=share if share is not plan else None)

    async def release_slot(self, client: str, slot: str) -> None:
        # Whatever the breaker says now: the slot was taken on Redis, and is given back there
        # (or expires with its lease if Redis does not take the release).
        await self._shared.release_slot(client, slot)

    async def refund(self, client: str, plan: Plan, cost: int) -> None:
        if self._breaker.allow():
            try:
                await self._shared.refund(client, plan, cost)
            except LimiterUnavailable:
                self._breaker.record_failure()
            except BaseException:
                self._breaker.release_probe()
                raise
            else:
                self._breaker.record_success()
                return
        await self._local.refund(client, self._local_plan(plan), cost)

    async def close(self) -> None:
        await self._shared.close()
        await self._local.close()

    def _local_plan(self, plan: Plan) -> Plan:
        parts = self._nodes()
        local = self._local_plans.get((id(plan), parts))
        if local is None:
            local = self._local_plans[(id(plan), parts)] = plan.divided(parts, self._minimum_burst)
        return local
