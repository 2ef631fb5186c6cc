"""The in-process limiter: the embedded default, and the fallback when Redis is unavailable.

Single event loop, no awaits inside a decision: each decision is atomic by construction.
Memory stays bounded: a stored TAT that has passed means a full bucket, and such entries are
swept out as the table grows.
"""

from __future__ import annotations

from collections.abc import Callable

from keel.ratelimit.clock import monotonic_us
from keel.ratelimit.gcra import Decision, decide, describe, refunded
from keel.ratelimit.policy import Plan

_SWEEP_EVERY = 10_000  # decisions between sweeps of expired entries


class InMemoryRateLimiter:
    def __init__(self, now_us: Callable[[], int] = monotonic_us) -> None:
        self._now_us = now_us
        self._tats: dict[tuple[str, str], int] = {}
        self._until_sweep = _SWEEP_EVERY

    async def switched_off(self) -> bool:
        return False  # only the shared limiter has a fleet-wide switch

    def switched_off_seen(self) -> bool | None:
        return False

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        return self.acquire_now(client, plan, cost)  # one process: the guard counts its slots

    async def release_slot(self, client: str, slot: str) -> None:
        return None

    def acquire_now(self, client: str, plan: Plan, cost: int) -> Decision:
        now = self._now_us()
        keys = [(client, p.name) for p in plan.policies]
        tats = [self._tats.get(key) for key in keys]
        verdicts, stored = decide(tats, now, plan.policies, cost)
        for key, tat in zip(keys, stored, strict=True):
            if tat is not None and tat > now:
                self._tats[key] = tat
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)
        return describe(verdicts, stored, now, plan.policies, cost)

    async def refund(self, client: str, plan: Plan, cost: int) -> None:
        now = self._now_us()
        for policy in plan.policies:
            if policy.shadow:
                continue  # as in the Redis script: a shadow charge may never have happened
            key = (client, policy.name)
            back = refunded(self._tats.get(key), now, policy, cost)
            if back is None:
                self._tats.pop(key, None)
            else:
                self._tats[key] = back

    async def close(self) -> None:
        self._tats.clear()

    def __len__(self) -> int:
        return len(self._tats)

    def _sweep(self, now: int) -> None:
        self._until_sweep = max(_SWEEP_EVERY, len(self._tats))
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
