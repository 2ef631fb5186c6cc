from __future__ import annotations

from keel.resilience.adaptive_limit import GradientLimit
from keel.resilience.load_shedder import LoadShedder, Priority


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _feed(
    limit: GradientLimit, clock: Clock, latency: float, in_flight: int, windows: int, operation: str = "read"
) -> None:
    for _ in range(windows):
        for _ in range(10):
            limit.observe(operation, latency, in_flight)
        clock.now += 0.1


def _release(shedder: LoadShedder, admitted_at: float | None) -> None:
    """Ends a list request that `try_admit` admitted (its admission time is not None)."""
    assert admitted_at is not None, "the request was shed, there is nothing to release"
    shedder.release("list", admitted_at)


def test_limit_grows_at_no_load_latency_and_shrinks_when_requests_queue() -> None:
    clock = Clock()
    limit = GradientLimit(initial=20, minimum=2, maximum=200, clock=clock)
    _feed(limit, clock, 0.004, in_flight=20, windows=20)
    grown = limit.limit
    assert grown > 30  # used and not slower than unloaded: probe upwards
    _feed(limit, clock, 0.016, in_flight=int(grown), windows=50)  # 4x the no-load latency
    squeezed = limit.limit
    assert squeezed < grown * 0.25
    _feed(limit, clock, 0.004, in_flight=100, windows=40)  # demand is there again
    assert limit.limit > squeezed * 2


def test_slow_operations_are_judged_against_their_own_no_load_latency() -> None:
    clock = Clock()
    limit = GradientLimit(initial=20, minimum=2, maximum=200, clock=clock)
    for _ in range(30):
        for _ in range(5):
            limit.observe("read", 0.001, 20)
            limit.observe("list", 0.012, 20)  # 12x a read, but its normal speed
        clock.now += 0.1
    assert limit.limit > 20


def test_a_short_queue_is_tolerated() -> None:
    # Bursts of fast reads: 3x their no-load latency, but only ~2 ms of queueing on average.
    clock = Clock()
    limit = GradientLimit(initial=10, minimum=2, maximum=200, clock=clock)
    _feed(limit, clock, 0.001, in_flight=10, windows=1)
    _feed(limit, clock, 0.003, in_flight=10, windows=30)
    assert limit.limit >= 10


def test_limit_does_not_grow_when_it_is_not_used() -> None:
    clock = Clock()
    limit = GradientLimit(initial=40, minimum=4, maximum=200, clock=clock)
    _feed(limit, clock, 0.010, in_flight=3, windows=50)
    assert limit.limit == 40


def test_limit_stays_within_bounds() -> None:
    clock = Clock()
    limit = GradientLimit(initial=10, minimum=8, maximum=12, clock=clock)
    _feed(limit, clock, 0.001, in_flight=12, windows=50)
    assert limit.limit == 12
    _feed(limit, clock, 1.0, in_flight=12, windows=50)
    assert limit.limit == 8


def test_sheddable_work_goes_first_and_critical_keeps_the_rest() -> None:
    clock = Clock()
    shed: list[Priority] = []
    shedder = LoadShedder(GradientLimit(initial=10, minimum=10, maximum=10, clock=clock), on_shed=shed.append)
    tickets = [shedder.try_admit(Priority.SHEDDABLE) for _ in range(10)]
    assert sum(t is not None for t in tickets) == 8  # 80 % of the limit
    assert shedder.try_admit(Priority.NORMAL) is not None  # 9 of 10: under normal's 90 %
    assert shedder.try_admit(Priority.NORMAL) is None
    assert shedder.try_admit(Priority.CRITICAL) is not None  # critical may use the whole limit
    assert shedder.try_admit(Priority.CRITICAL) is None
    assert shed == [Priority.SHEDDABLE, Priority.SHEDDABLE, Priority.NORMAL, Priority.CRITICAL]


def test_shedding_has_hysteresis() -> None:
    clock = Clock()
    shedder = LoadShedder(GradientLimit(initial=20, minimum=20, maximum=20, clock=clock), restore_ratio=0.75)
    admitted = [shedder.try_admit(Priority.SHEDDABLE) for _ in range(16)]
    assert shedder.try_admit(Priority.SHEDDABLE) is None  # 16 = 80 % of 20: shedding starts
    _release(shedder, admitted.pop())  # 15 in flight: under the share, but above the restore point
    assert shedder.try_admit(Priority.SHEDDABLE) is None
    for _ in range(4):
        _release(shedder, admitted.pop())  # 11 in flight: below 75 % of 16
    assert shedder.try_admit(Priority.SHEDDABLE) is not None
    assert not shedder.shedding(Priority.SHEDDABLE)


def test_a_lagging_event_loop_shrinks_a_full_limit() -> None:
    # Requests look no slower than unloaded once admitted, but each waited 30 ms on the loop
    # before anything in the process saw it: only the lag shows the queue.
    clock = Clock()
    limit = GradientLimit(initial=20, minimum=2, maximum=200, clock=clock)
    _feed(limit, clock, 0.004, in_flight=20, windows=1)
    for _ in range(30):
        for _ in range(3):
            limit.observe_loop_lag(0.03)
        _feed(limit, clock, 0.004, in_flight=int(limit.limit), windows=1)
    assert limit.limit < 10


def test_refuses_answers_only_while_a_priority_is_being_shed() -> None:
    shed: list[Priority] = []
    shedder = LoadShedder(GradientLimit(initial=10, minimum=10, maximum=10), on_shed=shed.append)
    admitted = [shedder.try_admit(Priority.CRITICAL) for _ in range(8)]
    assert not shedder.refuses(Priority.SHEDDABLE)  # at 80 % but not shedding yet: try_admit decides
    assert shed == []
    assert shedder.try_admit(Priority.SHEDDABLE) is None  # starts shedding
    assert shedder.refuses(Priority.SHEDDABLE)
    assert shedder.in_flight == 8  # no slot taken
    assert not shedder.refuses(Priority.CRITICAL)
    for admitted_at in admitted[:2]:
        assert admitted_at is not None
        shedder.release("read", admitted_at)
    # 6 in flight: below 85 % of the sheddable share (6.8), so the full path may restore it.
    assert not shedder.refuses(Priority.SHEDDABLE)
    assert shed == [Priority.SHEDDABLE, Priority.SHEDDABLE]
