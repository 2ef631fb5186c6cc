"""What the request path needs from a rate limiter, whatever stores its state."""

from __future__ import annotations

from typing import Protocol

from keel.ratelimit.gcra import Decision
from keel.ratelimit.policy import Plan


class RateLimiter(Protocol):
    async def switched_off(self) -> bool:
        """The fleet-wide kill switch is on: admit everything, refuse nothing."""
        ...

    def switched_off_seen(self) -> bool | None:
        """The kill switch as `switched_off` last read it, while that reading is still fresh;
        None when only `switched_off` can tell. No I/O."""
        ...

    async def acquire(self, client: str, plan: Plan, cost: int) -> Decision:
        """Check every policy of the plan and charge them all, or none: one atomic step."""
        ...

    async def refund(self, client: str, plan: Plan, cost: int) -> None:
        """Give back units of a request that turned out free (a 304)."""
        ...

    async def close(self) -> None: ...


class LimiterUnavailable(Exception):
    """The shared limiter store did not answer in time, or failed."""
