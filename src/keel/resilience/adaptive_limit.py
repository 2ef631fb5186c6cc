"""An adaptive concurrency limit driven by observed latency, after Netflix concurrency-limits'
Gradient2: the limit grows while latency stays near its long-run average, and shrinks in
proportion when the short-run latency climbs above it (queueing). No hand-tuned constant for
the capacity of the machine.

Latencies are aggregated over small windows (at least `window_seconds` and `window_samples`);
each window updates the limit once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class GradientLimit:
    def __init__(
        self,
        *,
        initial: int = 32,
        minimum: int = 8,
        maximum: int = 512,
        smoothing: float = 0.2,
        tolerance: float = 1.5,
        long_window: int = 600,
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
        self._long_window = long_window
        self._window_seconds = window_seconds
        self._window_samples = window_samples
        self._clock = clock
        self._on_change = on_change
        self._long_rtt: float | None = None
        self._windows_seen = 0
        self._window_start = clock()
        self._window_sum = 0.0
        self._window_count = 0
        self._window_max_in_flight = 0

    def observe(self, latency_seconds: float, in_flight: int) -> None:
        """A completed request: its latency and how many were in flight when it started."""
        self._window_sum += latency_seconds
        self._window_count += 1
        if in_flight > self._window_max_in_flight:
            self._window_max_in_flight = in_flight
        now = self._clock()
        if self._window_count >= self._window_samples and now - self._window_start >= self._window_seconds:
            self._update(self._window_sum / self._window_count, self._window_max_in_flight)
            self._window_start = now
            self._window_sum = 0.0
            self._window_count = 0
            self._window_max_in_flight = 0

    def _update(self, short_rtt: float, max_in_flight: int) -> None:
        self._windows_seen += 1
        if self._long_rtt is None:
            self._long_rtt = short_rtt
        else:
            # A plain average while warming up, then an exponential one over `long_window` windows.
            weight = 1 / min(self._windows_seen, self._long_window)
            self._long_rtt += (short_rtt - self._long_rtt) * weight
        if self._long_rtt / short_rtt > 2:
            # Latency fell well below the long-run average (a load spike has passed): let the
            # average come down faster, or the limit would stay inflated.
            self._long_rtt *= 0.95
        if max_in_flight < self.limit / 2 and short_rtt <= self._tolerance * self._long_rtt:
            return  # not using the limit: no evidence to grow it
        gradient = max(0.5, min(1.0, self._tolerance * self._long_rtt / short_rtt))
        queue_allowance = math.sqrt(self.limit)
        proposed = self.limit * gradient + queue_allowance
        smoothed = self.limit * (1 - self._smoothing) + proposed * self._smoothing
        new_limit = max(float(self._minimum), min(float(self._maximum), smoothed))
        if new_limit != self.limit:
            self.limit = new_limit
            if self._on_change is not None:
                self._on_change(new_limit)
