"""How far behind this process's event loop is, measured by a timer that should fire every
10 ms. On a saturated loop everything waits: new requests in their sockets, replies from
dependencies in theirs. Callers use it to tell "the dependency is slow" from "we are slow".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PROBE_SECONDS = 0.01


class LoopLag:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last = 0.0  # the last measured lag, seconds
        self._sampled_at = clock()
        self._listeners: list[Callable[[float], None]] = []
        self._watched = False  # until `watch` runs (or samples are recorded), nothing is known

    def subscribe(self, listener: Callable[[float], None]) -> None:
        self._listeners.append(listener)

    def record(self, lag_seconds: float) -> None:
        self._watched = True
        self.last = lag_seconds
        self._sampled_at = self._clock()
        for listener in self._listeners:
            listener(lag_seconds)

    def behind(self, threshold_seconds: float) -> bool:
        """Is the loop more than `threshold_seconds` late, by the last sample or because the
        probe itself has not run for that long past its due time?"""
        if not self._watched:
            return False
        overdue = self._clock() - self._sampled_at - PROBE_SECONDS
        return self.last > threshold_seconds or overdue > threshold_seconds

    async def watch(self) -> None:
        """Sample until cancelled."""
        loop = asyncio.get_running_loop()
        self._watched = True
        self._sampled_at = self._clock()
        while True:
            started = loop.time()
            await asyncio.sleep(PROBE_SECONDS)
            self.record(max(0.0, loop.time() - started - PROBE_SECONDS))
