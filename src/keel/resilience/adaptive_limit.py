"""An adaptive concurrency limit driven by observed latency, in the spirit of Netflix
concurrency-limits' gradient controllers: the limit grows while requests take about as long as
they do unloaded, and shrinks in proportion when they take longer (they are queueing, for the
CPU of this event loop or for a dependency). No hand-tuned constant for the machine's capacity.

The signal is latency *inflation*: each request's latency divided by the no-load latency of its
own operation (a list of 50 profiles is slower than a read of one without being a sign of
overload). The no-load latency is a running minimum per operation that creeps up by 2 % a
second, so it follows a genuine change in the data but not a passing queue.

As in CoDel, a queue that adds less than a target delay (5 ms) on average is tolerated: bursts of
arrivals queue briefly on an otherwise idle process, and shedding them would refuse work the
process has time for. The delay counted is the requests' own (latency over no-load latency)
plus the event loop's lag, measured by a timer: on a saturated loop, new requests wait in the
socket before anything in the process sees them, and only the lag shows that wait. When the
delay is over target, the gradient uses the inflation of the window's latencies (including lag).

Latencies are aggregated over small windows (at least `window_seconds` and `window_samples`);
each window updates the limit once:

    gradient  = clamp(tolerance / mean inflation, 0.5, 1.0)
    proposed  = limit * gradient + sqrt(limit)          (room to probe upwards)
    limit     = limit * (1 - smoothing) + proposed * smoothing

It grows only when the window used at least half the limit, and shrinks only when the window
filled it (80 %): latency that rises while the limit is not what holds requests back comes from
somewhere the limit cannot help.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

_BASELINE_CREEP = 1.002  # per window: 2 % a second
_SATURATED = 0.8  # in flight, as a share of the limit, for slowness to count against the limit


class GradientLimit:
    def __init__(
        self,
        *,
        initial: int = 16,
        minimum: int = 2,
        maximum: int = 256,
        smoothing: float = 0.2,
        tolerance: float = 2.0,
        target_delay_seconds: float = 0.005,
        window_seconds: float = 0.1,
        window_samples: int = 10,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[float], None] | None = None,
    ) -> None:
        if not minimum <= initial <= maximum:
            raise ValueError("concurrency limits: minimum <= initial <= maximum")
        self.limit = float(initial)
        self._minimum = minimum
        self._maximum = maximum
        self._smoothing = smoothing
        self._tolerance = tolerance
        self._target_delay = target_delay_seconds
        self._window_seconds = window_seconds
        self._window_samples = window_samples
        self._clock = clock
        self._on_change = on_change
        self._no_load: dict[str, float] = {}
        self._window_start = clock()
        self._window_inflation = 0.0
        self._window_delay = 0.0
        self._window_count = 0
        self._window_max_in_flight = 0
        self._lag_sum = 0.0
        self._lag_count = 0

    def no_load_seconds(self, operation: str) -> float | None:
        """The no-load latency `operation` is judged against now (None before its first)."""
        return self._no_load.get(operation)

    def observe_loop_lag(self, lag_seconds: float) -> None:
        """How late a timer fired on the event loop: the wait every new request has before this
        process even reads it, which request latencies measured after admission cannot see."""
        self._lag_sum += lag_seconds
        self._lag_count += 1

    def observe(self, operation: str, latency_seconds: float, in_flight: int) -> None:
        """A completed request: its operation, latency, and how many were in flight with it."""
        no_load = self._no_load.get(operation)
        if no_load is None or latency_seconds < no_load:
            no_load = self._no_load[operation] = max(latency_seconds, 1e-6)
        self._window_inflation += latency_seconds / no_load
        self._window_delay += latency_seconds - no_load
        self._window_count += 1
        if in_flight > self._window_max_in_flight:
            self._window_max_in_flight = in_flight
        now = self._clock()
        if self._window_count >= self._window_samples and now - self._window_start >= self._window_seconds:
            count = self._window_count
            lag = self._lag_sum / self._lag_count if self._lag_count else 0.0
            self._lag_sum = 0.0
            self._lag_count = 0
            self._update(
                self._window_inflation / count, self._window_delay / count + lag, self._window_max_in_flight
            )
            for name in self._no_load:
                self._no_load[name] *= _BASELINE_CREEP
            self._window_start = now
            self._window_inflation = 0.0
            self._window_delay = 0.0
            self._window_count = 0
            self._window_max_in_flight = 0

    def _update(self, inflation: float, queue_delay: float, max_in_flight: int) -> None:
        if queue_delay <= self._target_delay:
            gradient = 1.0  # a short queue (a burst of arrivals) is not overload
        else:
            gradient = max(0.5, min(1.0, self._tolerance / max(inflation, queue_delay / self._target_delay)))
        if gradient == 1.0 and max_in_flight < self.limit / 2:
            return  # not using the limit: no evidence that more would be fine
        if gradient < 1.0 and max_in_flight < self.limit * _SATURATED:
            # Slow, but not because of what this limit admits: the queue is elsewhere (other
            # work on this event loop, such as refusing an abuser; another process on the CPU).
            # Shrinking the limit would only shed requests that are not the cause.
            return
        proposed = self.limit * gradient + math.sqrt(self.limit)
        smoothed = self.limit * (1 - self._smoothing) + proposed * self._smoothing
        new_limit = max(float(self._minimum), min(float(self._maximum), smoothed))
        if new_limit != self.limit:
            self.limit = new_limit
            if self._on_change is not None:
                self._on_change(new_limit)
