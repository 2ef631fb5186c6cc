from __future__ import annotations

from typing import TypedDict, Unpack

from keel.resilience.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Options(TypedDict, total=False):
    failure_rate: float
    window_seconds: float
    minimum_calls: int
    consecutive_failures: int
    open_seconds: float


def _breaker(clock: Clock, **options: Unpack[Options]) -> tuple[CircuitBreaker, list[str]]:
    seen: list[str] = []
    breaker = CircuitBreaker(
        "dep",
        clock=clock,
        on_transition=lambda name, old, new: seen.append(new.value),
        **options,
    )
    return breaker, seen


def _state(breaker: CircuitBreaker) -> BreakerState:
    """The state read afresh: mypy would keep an earlier assert's narrowing of `breaker.state`
    across the calls that change it."""
    return breaker.state


def test_consecutive_failures_open_then_a_probe_closes() -> None:
    clock = Clock()
    breaker, seen = _breaker(clock, consecutive_failures=3, open_seconds=2)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED
    assert seen == ["open", "half_open", "closed"]


def test_a_failed_probe_opens_again() -> None:
    clock = Clock()
    breaker, _ = _breaker(clock, consecutive_failures=1, open_seconds=1)
    breaker.allow()
    breaker.record_failure()
    clock.now = 1.5
    assert breaker.allow()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    clock.now = 2.0
    assert not breaker.allow()  # the open period starts again from the failed probe


def test_failure_rate_over_the_window_opens() -> None:
    clock = Clock()
    breaker, _ = _breaker(
        clock, consecutive_failures=100, failure_rate=0.5, minimum_calls=10, window_seconds=10
    )
    for i in range(9):
        breaker.record_failure() if i % 2 else breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED  # too few calls to judge
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    breaker, _ = _breaker(
        clock, consecutive_failures=100, failure_rate=0.5, minimum_calls=4, window_seconds=10
    )
    for _ in range(3):
        breaker.record_failure()  # too few calls to judge, yet
    clock.now = 11.0  # ...and now out of the window: they must not count with the new ones
    for _ in range(3):
        breaker.record_success()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED
