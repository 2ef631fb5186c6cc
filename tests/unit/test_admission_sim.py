"""The admission simulation (bench/admission_sim.py) keeps its books: every arrival answered
once, HAProxy's overflow refused at its queue timeout, one request alone served in its own CPU
time, the same run for the same seed, and Keel's own controller steering."""

from __future__ import annotations

import pytest
from bench.admission_sim import Result, Setting, simulate

from keel.resilience.load_shedder import Priority

READ_S, LIST_S = 0.0004, 0.004  # CPU seconds a read and a list take, fixed
SAMPLES = {"read": [READ_S], "list": [LIST_S]}
LIST_SATURATION = (1 - 40 * READ_S) / LIST_S


def _run(multiple: float, *, proxy: bool = True, timeout_queue: float = 0.05, seed: int = 1) -> Result:
    setting = Setting(
        streams={"read": 40.0, "list": multiple * LIST_SATURATION},
        duration_s=12.0,
        cpu_samples=SAMPLES,
        warmup_s=2.0,
        proxy=proxy,
        timeout_queue_s=timeout_queue,
    )
    return simulate(setting, seed)


@pytest.mark.parametrize("proxy", [True, False])
def test_every_arrival_is_answered_once(proxy: bool) -> None:
    result = _run(3.0, proxy=proxy)
    assert result.arrivals > 1000
    assert len(result.outcomes) == result.arrivals
    assert len({id(o) for o in result.outcomes}) == result.arrivals
    assert {o.status for o in result.outcomes} == {200, 503}
    for outcome in result.outcomes:
        assert outcome.answered >= outcome.arrived
        assert (outcome.refused_by is None) is (outcome.status == 200)
    refusers = {o.refused_by for o in result.outcomes if o.status == 503}
    if proxy:
        assert "proxy" in refusers  # the overflow waits at the proxy, and some of it is refused there
    else:
        assert refusers == {"keel"}


def test_the_proxy_refuses_its_overflow_when_its_queue_timeout_is_up() -> None:
    result = _run(3.0, timeout_queue=0.05)
    refused = [o for o in result.outcomes if o.refused_by == "proxy"]
    assert refused
    assert all(o.latency == pytest.approx(0.05) for o in refused)


def test_a_request_alone_takes_its_own_cpu_time() -> None:
    setting = Setting(streams={"read": 5.0}, duration_s=20.0, cpu_samples=SAMPLES, warmup_s=0.0)
    result = simulate(setting, 3)
    alone = [o for o in result.outcomes if o.latency < 2 * READ_S]
    assert len(alone) >= 0.95 * len(result.outcomes)  # at 5/s, two rarely overlap
    assert all(o.latency == pytest.approx(READ_S) for o in alone)
    assert {o.status for o in result.outcomes} == {200}


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    def trace(result: Result) -> list[tuple[str, int, float]]:
        return [(o.kind, o.status, round(o.latency, 12)) for o in result.outcomes]

    assert trace(_run(2.0, seed=5)) == trace(_run(2.0, seed=5))
    assert trace(_run(2.0, seed=5)) != trace(_run(2.0, seed=6))


def test_keels_controller_steers_and_sheds_lists_before_critical_requests() -> None:
    unloaded, overloaded = _run(0.3, proxy=False), _run(3.0, proxy=False)
    assert unloaded.success_rate(Priority.CRITICAL) == 1.0
    assert unloaded.success_rate(Priority.SHEDDABLE) == 1.0
    assert len(set(overloaded.limits)) > 1  # the GradientLimit moved on the simulated clock
    assert overloaded.success_rate(Priority.SHEDDABLE) < 0.5
    assert overloaded.success_rate(Priority.CRITICAL) > overloaded.success_rate(Priority.SHEDDABLE)
