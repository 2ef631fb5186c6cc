"""The admission simulation (bench/admission_sim.py) keeps its books: every arrival answered
once, HAProxy's overflow refused at its queue timeout, one request alone served in its own CPU
time, the same run for the same seed, and Keel's own controller steering."""

from __future__ import annotations

import math

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
    assert (
        len({limit for _, limit in overloaded.limits}) > 1
    )  # the GradientLimit moved on the simulated clock
    assert overloaded.success_rate(Priority.SHEDDABLE) < 0.5
    assert overloaded.success_rate(Priority.CRITICAL) > overloaded.success_rate(Priority.SHEDDABLE)


def test_requests_in_the_event_loop_share_its_cpu() -> None:
    # Two arriving together, of 1 ms and 3 ms: both progress at half speed until the first
    # ends at 2 ms, then the second alone, ending at 4 ms.
    setting = Setting(
        streams={},
        duration_s=1.0,
        cpu_samples={"read": [0.001], "list": [0.003]},
        warmup_s=0.0,
        proxy=False,
        arrivals=[(0.0, "read"), (0.0, "list")],
    )
    answered = {o.kind: o.answered for o in simulate(setting, 1).outcomes}
    assert answered == {"read": pytest.approx(0.002), "list": pytest.approx(0.004)}


def test_the_proxy_dequeues_reads_and_writes_before_lists() -> None:
    # One connection to the node: a read holds it; a list, then a read, wait in the queue.
    setting = Setting(
        streams={},
        duration_s=1.0,
        cpu_samples={"read": [0.001], "list": [0.003]},
        warmup_s=0.0,
        fixed_maxconn=1,
        arrivals=[(0.0, "read"), (0.0001, "list"), (0.0002, "read")],
    )
    outcomes = sorted(simulate(setting, 1).outcomes, key=lambda o: o.answered)
    assert [(o.kind, o.status) for o in outcomes] == [("read", 200), ("read", 200), ("list", 200)]
    assert [o.answered for o in outcomes] == [pytest.approx(t) for t in (0.001, 0.002, 0.005)]


def test_goodput_counts_only_what_was_served_within_the_run() -> None:
    # A queue longer than the run's end: what is served after it is not the run's goodput, so
    # goodput never exceeds what the CPU can serve.
    result = _run(2.0, timeout_queue=1.0)
    capacity = 40 + LIST_SATURATION
    assert result.goodput_rps() <= capacity * 1.001
    after_the_end = [
        o for o in result.outcomes if o.status == 200 and o.answered >= result.setting.duration_s
    ]
    assert after_the_end  # there was such work, and it was left out


def test_percentiles_of_nothing_are_not_a_pass() -> None:
    result = _run(0.3)
    assert not [o for o in result.counted() if o.status == 503]
    assert math.isnan(result.p(99, served=False))


def test_the_controller_reports_the_no_load_latency_it_judges_against() -> None:
    result = _run(0.3, proxy=False)
    # Unloaded, some list ran alone: its own CPU time is the baseline (crept a little since).
    assert LIST_S * 0.999 <= result.no_load_at_end["list"] < 2 * LIST_S
