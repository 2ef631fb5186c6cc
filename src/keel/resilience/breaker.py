"""A small circuit breaker for asyncio callers (the usual Python ones are sync-only or count
only consecutive failures).

Closed: calls pass; failures are counted over a sliding time window, and the breaker opens when
the failure rate over that window reaches the threshold (with enough calls to judge), or at once
after a run of consecutive failures (a dependency that is down fails every call). Open: calls are
refused without touching the dependency, for `open_seconds`. Half-open: a few probe calls pass;
one success closes the breaker, one failure opens it again.

No locks: the breaker lives on one event loop and none of its methods await.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Transition = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_rate: float = 0.5,
        window_seconds: float = 10.0,
        minimum_calls: int = 20,
        consecutive_failures: int = 3,
        open_seconds: float = 2.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Transition | None = None,
    ) -> None:
        self.name = name
        self._failure_rate = failure_rate
        self._window = window_seconds
        self._minimum_calls = minimum_calls
        self._consecutive_limit = consecutive_failures
        self._open_seconds = open_seconds
        self._half_open_probes = half_open_probes
        self._clock = clock
        self._on_transition = on_transition
        self.state = BreakerState.CLOSED
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._failures_in_window = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes = 0

    def allow(self) -> bool:
        """May a call go to the dependency now? A True in half-open state is a probe: report
        its outcome with `record_success` or `record_failure`."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._open_seconds:
                return False
            self._move_to(BreakerState.HALF_OPEN)
            self._probes = 0
        if self._probes >= self._half_open_probes:
            return False
        self._probes += 1
        return True

    def seconds_until_probe(self) -> float:
        """While open: how long until a probe may go through; else 0."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_seconds - (self._clock() - self._opened_at))

    def release_probe(self) -> None:
        """A call let through ended with no verdict on the dependency (it was cancelled): give
        back its half-open probe slot without counting a failure."""
        if self.state is BreakerState.HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def record_success(self) -> None:
        self._consecutive = 0
        if self.state is BreakerState.HALF_OPEN:
            self._reset_window()
            self._move_to(BreakerState.CLOSED)
            return
        self._record(failed=False)

    def record_failure(self) -> None:
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        if self.state is BreakerState.OPEN:
            return
        self._record(failed=True)
        calls = len(self._outcomes)
        if self._consecutive >= self._consecutive_limit or (
            calls >= self._minimum_calls and self._failures_in_window / calls >= self._failure_rate
        ):
            self._open()

    def _record(self, *, failed: bool) -> None:
        now = self._clock()
        self._outcomes.append((now, failed))
        self._failures_in_window += failed
        horizon = now - self._window
        while self._outcomes and self._outcomes[0][0] < horizon:
            _, old_failed = self._outcomes.popleft()
            self._failures_in_window -= old_failed

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._reset_window()
        self._move_to(BreakerState.OPEN)

    def _reset_window(self) -> None:
        self._outcomes.clear()
        self._failures_in_window = 0

    def _move_to(self, state: BreakerState) -> None:
        previous, self.state = self.state, state
        if previous is not state and self._on_transition is not None:
            self._on_transition(self.name, previous, state)
