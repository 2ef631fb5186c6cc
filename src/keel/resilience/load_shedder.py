"""Load shedding by priority under the adaptive concurrency limit.

Critical work (writes, reads of one profile) may use the whole limit, normal work 90 % of it,
sheddable work (lists, searches, bulk) 80 %: as load grows, sheddable requests are refused first.
Each priority sheds with hysteresis: once it has refused a request it keeps refusing until the
in-flight count has fallen below `restore_ratio` of its share, so admission does not flap at the
boundary. Rejections happen before any other work and cost almost nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from keel.resilience.adaptive_limit import GradientLimit


class Priority(IntEnum):
    CRITICAL = 0
    NORMAL = 1
    SHEDDABLE = 2


SHARES = {Priority.CRITICAL: 1.0, Priority.NORMAL: 0.9, Priority.SHEDDABLE: 0.8}


class LoadShedder:
    def __init__(
        self,
        limit: GradientLimit,
        *,
        restore_ratio: float = 0.85,
        clock: Callable[[], float] = time.perf_counter,
        on_shed: Callable[[Priority], None] | None = None,
    ) -> None:
        self.limit = limit
        self.in_flight = 0
        self._restore_ratio = restore_ratio
        self._clock = clock
        self._on_shed = on_shed
        self._shedding = dict.fromkeys(Priority, False)

    def try_admit(self, priority: Priority) -> float | None:
        """The admission time of an admitted request (pass it to `release`), None when shed."""
        allowed = self.limit.limit * SHARES[priority]
        if self._shedding[priority]:
            if self.in_flight >= allowed * self._restore_ratio:
                self._shed(priority)
                return None
            self._shedding[priority] = False
        elif self.in_flight >= allowed:
            self._shedding[priority] = True
            self._shed(priority)
            return None
        self.in_flight += 1
        return self._clock()

    def refuses(self, priority: Priority) -> bool:
        """Whether `priority` is being shed and a request of it would be refused now. Counts
        the refusal; takes no slot and never starts shedding (only `try_admit` does), so it
        can run before anything else to refuse at the least cost."""
        if not self._shedding[priority]:
            return False
        if self.in_flight < self.limit.limit * SHARES[priority] * self._restore_ratio:
            return False
        self._shed(priority)
        return True

    def release(self, operation: str, admitted_at: float, *, succeeded: bool = True) -> None:
        """A request admitted at `admitted_at` ended. Only successes steer the limit: a fast
        401 or 404 says nothing about how long the operation takes, and would pull its no-load
        latency down."""
        in_flight_at_end = self.in_flight
        self.in_flight -= 1
        if succeeded:
            self.limit.observe(operation, self._clock() - admitted_at, in_flight_at_end)

    def steady_concurrency(self) -> float:
        """How many requests at once this process takes and keeps taking without shedding its
        critical ones: below the limit by the hysteresis band. A proxy that holds it at the limit
        itself would, after any dip of the limit, keep it inside the band, shedding for good."""
        return self.limit.limit * self._restore_ratio

    def shedding(self, priority: Priority) -> bool:
        return self._shedding[priority]

    def _shed(self, priority: Priority) -> None:
        if self._on_shed is not None:
            self._on_shed(priority)
