from __future__ import annotations

from keel.resilience.adaptive_limit import GradientLimit
from keel.resilience.load_shedder import LoadShedder, Priority


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _feed(limit: GradientLimit, clock: Clock, latency: float, in_flight: int, windows: int) -> None:
    for _ in range(windows):
        for _ in range(10):
            limit.observe(latency, in_flight)
        clock.now += 0.1


def test_limit_shrinks_when_latency_climbs_and_grows_back_when_it_falls() -> None:
    clock = Clock()
    limit = GradientLimit(initial=50, minimum=4, maximum=200, clock=clock)
    _feed(limit, clock, 0.010, in_flight=50, windows=30)
    steady = limit.limit
    assert steady >= 50  # latency stable while the limit is used: it may grow
    _feed(limit, clock, 0.060, in_flight=int(steady), windows=30)
    squeezed = limit.limit
    assert squeezed < steady * 0.5
    _feed(limit, clock, 0.010, in_flight=int(squeezed), windows=60)
    assert limit.limit > squeezed * 1.5


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
    shedder.release(admitted.pop())  # 15 in flight: under the share, but above the restore point
    assert shedder.try_admit(Priority.SHEDDABLE) is None
    for _ in range(4):
        shedder.release(admitted.pop())  # 11 in flight: below 75 % of 16
    assert shedder.try_admit(Priority.SHEDDABLE) is not None
    assert not shedder.shedding(Priority.SHEDDABLE)
