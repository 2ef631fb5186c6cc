"""Retries that cannot turn a failing dependency into an overloaded one.

Only the caller knows what is safe to retry (reads; writes carrying an idempotency key); this
module decides when and how often. Backoff is capped exponential with full jitter (AWS
Architecture Blog, "Exponential Backoff And Jitter"), so that clients failing together do not
come back together. A retry budget (Finagle's `RetryBudget`) bounds retries to a share of
first attempts: with `ratio=0.2` a dependency that fails everything receives at most ~1.2× the
request rate, plus a small floor so that rare requests may still retry once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from keel.resilience.deadline import remaining

T = TypeVar("T")


class RetryBudget:
    """Each first attempt deposits `ratio` of a retry; each retry withdraws one. Besides,
    `floor_per_second` retries accrue with time. The balance is capped, so a quiet period
    cannot save up a storm."""

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        floor_per_second: float = 1.0,
        cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._floor = floor_per_second
        self._cap = cap
        self._clock = clock
        self._balance = 0.0
        self._updated = clock()

    def deposit(self) -> None:
        self._refill()
        self._balance = min(self._cap, self._balance + self._ratio)

    def try_withdraw(self) -> bool:
        self._refill()
        if self._balance < 1.0:
            return False
        self._balance -= 1.0
        return True

    def _refill(self) -> None:
        now = self._clock()
        self._balance = min(self._cap, self._balance + (now - self._updated) * self._floor)
        self._updated = now


class Backoff:
    """Capped exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base·2ⁿ))."""

    def __init__(
        self, *, base_seconds: float = 0.01, cap_seconds: float = 0.25, rng: random.Random | None = None
    ) -> None:
        self._base = base_seconds
        self._cap = cap_seconds
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0.0, min(self._cap, self._base * 2**attempt))


class RetryPolicy:
    def __init__(
        self,
        budget: RetryBudget,
        backoff: Backoff,
        *,
        max_attempts: int = 3,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.budget = budget
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._on_retry = on_retry

    async def run(self, call: Callable[[], Awaitable[T]], *, retryable: Callable[[BaseException], bool]) -> T:
        """Call until it succeeds, fails in a way that is not `retryable`, runs out of attempts
        or budget, or the next wait would pass the request's deadline: then its last error."""
        self.budget.deposit()
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as error:
                attempt += 1
                if not retryable(error) or attempt >= self._max_attempts:
                    raise
                delay = self._backoff.delay(attempt)
                left = remaining()
                if left is not None and delay >= left:
                    self._count("deadline")
                    raise
                if not self.budget.try_withdraw():
                    self._count("budget_exhausted")
                    raise
                self._count("retried")
            await asyncio.sleep(delay)

    def _count(self, outcome: str) -> None:
        if self._on_retry is not None:
            self._on_retry(outcome)
