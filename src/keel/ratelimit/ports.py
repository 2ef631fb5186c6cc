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

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        """Check every policy of the plan and charge them all, or none: one atomic step.

        `slot`: a name, unique to this request, under which a limiter shared by the fleet also
        takes one of the client's `plan.concurrency` slots in the same step (refused with
        `over_cap` when none is left; `slot_held` when taken). A limiter of this process alone
        ignores it: the guard's own count is its cap."""
        ...

    async def release_slot(self, client: str, slot: str) -> None:
        """Give back a slot taken by `acquire` (`slot_held`), before the request's answer
        leaves, so that a client's next request never finds its previous one still holding a
        slot. Never raises for the store: a slot not given back (the store failing, a process
        killed) expires after the limiter's lease."""
        ...

    async def refund(self, client: str, plan: Plan, cost: int) -> None:
        """Give back units of a request that turned out free (a 304)."""
        ...

    async def close(self) -> None: ...


class LimiterUnavailable(Exception):
    """The shared limiter store did not answer in time, or failed."""


class RefusalPublisher(Protocol):
    """Where a refusal by the shared limiter is told, so that something in front of Keel (the
    proxy) refuses the client's next requests itself until they could conform again
    (keel.ratelimit.proxy_refusals). The decision stays Keel's: this only passes it on."""

    def refused(self, key_id: str, wait_us: int) -> None:
        """API key `key_id` was refused; no request of it can conform for `wait_us`. Never
        blocks and never raises: what cannot be passed on is dropped (Keel still refuses)."""
        ...

    def refunded(self, key_id: str) -> None:
        """Units went back to `key_id` (a 304, a shed request): a deadline passed on for it may
        now be later than Keel's own, and is withdrawn. Never blocks, never raises."""
        ...
