"""Log lines for events that can happen thousands of times a second (rate-limit rejections,
shed requests): at most one line per event and interval, carrying how many were not logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog


class SampledLog:
    def __init__(
        self, logger_name: str, *, interval_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = structlog.get_logger(logger_name)
        self._interval = interval_seconds
        self._clock = clock
        self._next_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        now = self._clock()
        if now < self._next_at.get(event, 0.0):
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._next_at[event] = now + self._interval
        self._log.warning(event, suppressed_since_last=self._suppressed.pop(event, 0), **fields)
