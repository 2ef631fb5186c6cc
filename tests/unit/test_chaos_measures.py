"""Negative controls for the chaos experiments: synthetic runs with a known loss, a known stale
read, a known 500 (or 502, or no answer), a hung `/healthz`, a crashed workload, must make the
experiment's own checks (read from chaos/experiments/*.json) fail, and the same run without
the defect must pass them. A check that cannot fail is no check."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from chaos.events import Published, compare, drain_seconds
from chaos.measures import HealthzPoll, Result, Run, evaluate, evaluate_probe, loop_lag_buckets
from chaos.runner import EXPERIMENTS, record_history
from chaos.traffic import Sample
from testkit.history import FinalProfile, History, check

T0 = 1000.0  # phases: steady [T0, T0+10), fault [T0+10, T0+20), recovery [T0+20, T0+30)


def spec(prefix: str) -> dict[str, Any]:
    experiment: dict[str, Any] = json.loads(next(EXPERIMENTS.glob(f"{prefix}-*.json")).read_text())
    return experiment


def probe(experiment: dict[str, Any], name_part: str) -> dict[str, Any]:
    probes = [*experiment["steady-state-hypothesis"]["probes"], *experiment["checks"]]
    found: list[dict[str, Any]] = [p for p in probes if name_part in p["name"]]
    assert len(found) == 1, [p["name"] for p in probes]
    return found[0]


def result(prefix: str, name_part: str, run: Run) -> Result:
    return evaluate_probe(probe(spec(prefix), name_part), run)


def new_run(*phases: str) -> Run:
    run = Run(started=T0, ended=T0 + 10 * (len(phases) + 1))
    run.phases = [(T0 + 10 * (i + 1), phase) for i, phase in enumerate(phases)]
    return run


def samples(
    op: str, start: float, count: int, status: int = 200, seconds: float = 0.005, **kw: Any
) -> list[Sample]:
    return [Sample(op, start + i * 9.0 / count, seconds, status, **kw) for i in range(count)]


def polls(start: float, count: int, seconds: float = 0.002, ok: bool = True) -> list[HealthzPoll]:
    return [HealthzPoll(start + i * 9.0 / count, seconds, ok) for i in range(count)]


# -- the history family: 01, 02, 07, 08 ---------------------------------------------------------


def history_run(
    *, lose_create: bool = False, stale: bool = False, writes: int = 120, after_fault: bool = True
) -> Run:
    """A real history through the real checker: `writes` acknowledged creates (the first half
    in the steady phase, the rest once the system is back, in "restarted"; or all before the
    fault), one delete, one read; with a create missing from the final rows, or a read older
    than an acknowledged update by another process (a real-time stale read)."""
    ticks = itertools.count()
    origin = [T0]  # moved to T0 + 20, the start of "restarted" (see new_run), halfway
    steady_writes = writes // 2 if after_fault else writes
    h = History(clock=lambda: origin[0] + next(ticks) * 0.001)
    rows: dict[str, FinalProfile] = {}
    for n in range(writes):
        if n == steady_writes:
            origin[0] = T0 + 20.0
        invocation = h.invoke(0, "create", f"c{n}")
        h.complete(invocation, "ok", profile=f"p{n}", value={"version": 1})
        rows[f"p{n}"] = FinalProfile(f"p{n}", 1, False, {"op": f"c{n}"})
    h.complete(h.invoke(0, "update", "u1", profile="p1"), "ok", value={"version": 2})
    rows["p1"] = FinalProfile("p1", 2, False, {"op": "c1", "u_u1": True})
    h.complete(h.invoke(0, "delete", "d1", profile="p2"), "ok")
    rows["p2"] = FinalProfile("p2", 2, True, {"op": "c2"})
    read_version = 1 if stale else 2
    h.complete(h.invoke(1, "read", "r1", profile="p1"), "ok", value={"version": read_version, "stale": False})
    if lose_create:
        del rows["p0"]
    run = new_run("fault", "restarted")
    record_history(run, h, check(h, rows))
    run.healthz = polls(T0, 100)
    return run


HISTORY_EXPERIMENTS = ["01", "02", "07", "08", "09", "10"]
# The check that the history is not empty: a fixed minimum x time scale in 01, 02, 09 and 10;
# in 07 and 08, writes acknowledged once the system is back.
ACKNOWLEDGED = dict.fromkeys(["01", "02", "09", "10"], "acknowledged writes") | dict.fromkeys(
    ["07", "08"], "writes acknowledged once"
)


@pytest.mark.parametrize("experiment", HISTORY_EXPERIMENTS)
def test_a_clean_history_passes_the_history_checks(experiment: str) -> None:
    run = history_run()
    assert result(experiment, "history violations", run).passed
    assert result(experiment, ACKNOWLEDGED[experiment], run).passed


@pytest.mark.parametrize("experiment", HISTORY_EXPERIMENTS)
def test_a_lost_write_fails_the_experiment(experiment: str) -> None:
    assert not result(experiment, "history violations", history_run(lose_create=True)).passed


@pytest.mark.parametrize("experiment", HISTORY_EXPERIMENTS)
def test_a_realtime_stale_read_fails_the_experiment(experiment: str) -> None:
    run = history_run(stale=True)
    assert run.values["realtime_stale_reads"] == 1
    assert not result(experiment, "history violations", run).passed


@pytest.mark.parametrize("experiment", HISTORY_EXPERIMENTS)
def test_an_empty_history_fails_the_experiment(experiment: str) -> None:
    run = history_run(writes=0)
    assert result(experiment, "history violations", run).passed
    assert not result(experiment, ACKNOWLEDGED[experiment], run).passed


@pytest.mark.parametrize("experiment", ["07", "08"])
def test_a_history_that_does_not_span_the_fault_fails_the_experiment(experiment: str) -> None:
    """Writes acknowledged before the fault and once the system is back: a history with none
    after the restart (or none before the fault) does not cover what the experiment claims."""
    assert result(experiment, "writes acknowledged once", history_run(writes=120)).passed
    assert not result(experiment, "writes acknowledged once", history_run(after_fault=False)).passed
    nothing_before = history_run(writes=0)
    nothing_before.acknowledged = [T0 + 25.0]
    assert not result(experiment, "writes acknowledged before the fault", nothing_before).passed


def test_the_minimum_of_writes_follows_the_time_scale() -> None:
    run = history_run(writes=60)
    assert not result("02", "acknowledged writes", run).passed
    run.time_scale = 0.5
    assert result("02", "acknowledged writes", run).passed


@pytest.mark.parametrize("experiment", sorted(p.stem[:2] for p in EXPERIMENTS.glob("*.json")))
def test_a_crashed_workload_fails_every_experiment(experiment: str) -> None:
    run = history_run()
    run.values["workloads_crashed"] = 1
    crashed = [r for r in evaluate(spec(experiment), run) if r.name == "workloads that crashed"]
    assert [r.passed for r in crashed] == [False]


# -- the events family: 09, 10 (chaos/events.py on synthetic outboxes and streams) ----------------

EVENT_CHECKS = ["never got", "more than once", "out of order", "never committed", "committed events checked"]


def events_run(committed: list[str], stream: list[Published], drain_seconds: float = 2.0) -> Run:
    run = new_run("fault", "recovery")
    run.values.update(compare(committed, stream))
    run.values["events_drain_seconds"] = drain_seconds
    return run


def clean_events(profiles: int = 30, versions: int = 4) -> tuple[list[str], list[Published]]:
    stream = [Published(f"e{p}-{v}", f"p{p}", v) for v in range(1, versions + 1) for p in range(profiles)]
    return [m.event_id for m in stream], stream


@pytest.mark.parametrize("experiment", ["09", "10"])
def test_clean_events_pass_the_events_checks(experiment: str) -> None:
    run = events_run(*clean_events())
    for name in [*EVENT_CHECKS, "every committed event was published"]:
        assert result(experiment, name, run).passed, name


@pytest.mark.parametrize("experiment", ["09", "10"])
def test_a_lost_duplicated_reordered_or_unknown_event_fails(experiment: str) -> None:
    committed, stream = clean_events()
    lost = events_run(committed, stream[:-1])
    assert not result(experiment, "never got", lost).passed
    doubled = events_run(committed, [*stream, stream[5]])
    assert not result(experiment, "more than once", doubled).passed
    swapped = stream.copy()
    swapped[0], swapped[30] = swapped[30], swapped[0]  # p0's version 2 before its version 1
    assert not result(experiment, "out of order", events_run(committed, swapped)).passed
    unknown = events_run(committed, [*stream, Published("never", "p1", 9)])
    assert not result(experiment, "never committed", unknown).passed


@pytest.mark.parametrize("experiment", ["09", "10"])
def test_too_few_events_or_a_slow_drain_fails(experiment: str) -> None:
    assert not result(experiment, "committed events checked", events_run(*clean_events(profiles=3))).passed
    slow = events_run(*clean_events(), drain_seconds=math.inf)
    assert not result(experiment, "every committed event was published", slow).passed


async def test_the_drain_is_timed_from_the_fault_clearing_to_the_first_empty_outbox() -> None:
    samples = [(T0 + 1.0, 0), (T0 + 10.0, 40), (T0 + 20.0, 55), (T0 + 22.5, 3), (T0 + 23.0, 0)]
    # Found among the run's samples: no database is asked (the URL goes nowhere).
    assert await drain_seconds("postgresql://nobody@127.0.0.1:1/none", samples, T0 + 20.0, 0.0) == 3.0


def test_a_duplicate_is_not_counted_again_as_out_of_order_and_key_events_have_no_version() -> None:
    stream = [
        Published("a", "p", 1),
        Published("b", "p", 2),
        Published("a", "p", 1),
        Published("k", "key", None),
    ]
    assert compare(["a", "b", "k"], stream) == {
        "events_committed": 3.0,
        "events_published": 3.0,
        "events_lost": 0.0,
        "events_duplicated": 1.0,
        "events_out_of_order": 0.0,
        "events_unknown": 0.0,
    }


# -- /healthz -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("experiment", "phase"), [("01", "steady"), ("05", "steady"), ("08", "steady")])
def test_a_failing_healthz_fails_the_steady_state(experiment: str, phase: str) -> None:
    run = new_run("fault")
    run.healthz = polls(T0, 100)
    check_name = "/healthz polls that failed"
    assert result(experiment, check_name, run).passed
    run.healthz[50] = HealthzPoll(run.healthz[50].started, 2.0, ok=False)  # a timeout
    assert not result(experiment, check_name, run).passed


@pytest.mark.parametrize("experiment", ["02", "03", "04"])
def test_a_hung_healthz_during_the_fault_fails(experiment: str) -> None:
    run = new_run("fault", "recovery")
    run.healthz = polls(T0, 100, seconds=0.002) + polls(T0 + 10, 100, seconds=0.004)
    assert result(experiment, "/healthz p99", run).passed
    run.healthz[150:152] = polls(T0 + 15, 2, seconds=2.0, ok=False)  # 2 % timed out
    assert not result(experiment, "/healthz p99", run).passed


@pytest.mark.parametrize("experiment", ["02", "03", "04"])
def test_a_slow_healthz_beyond_the_baseline_factor_fails(experiment: str) -> None:
    run = new_run("fault", "recovery")
    run.healthz = polls(T0, 100, seconds=0.002) + polls(T0 + 10, 100, seconds=0.0081)
    checked = result(experiment, "/healthz p99", run)
    assert checked.tolerance["max"] == pytest.approx(8.0)  # 4 x the baseline's 2 ms
    assert not checked.passed


# -- Keel's own event-loop lag (keel_event_loop_lag_seconds from /metrics) ------------------------

LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
LAG_CHECK = {
    "name": "Keel's event-loop lag p99 during the fault",
    "measure": "keel_loop_lag_ms",
    "where": {"phase": "fault"},
    "tolerance": {"max_times_baseline": 4},
}


def lag_exposition(lags: list[float]) -> dict[str, float]:
    """The histogram's cumulative buckets after these wake-up lags, as the runner parses /metrics."""
    return {
        f'keel_event_loop_lag_seconds_bucket{{le="{"+Inf" if b == math.inf else b}"}}': float(
            sum(lag <= b for lag in lags)
        )
        for b in LAG_BOUNDS
    }


def lag_run(fault_lags: list[float], *, restart_in_fault: bool = False) -> Run:
    """Samples every second: 100 wake-ups 2 ms late each second of the steady phase, then in the
    fault phase the same plus `fault_lags`; `restart_in_fault` starts the count again from zero
    halfway through the fault (a restarted process)."""
    run = new_run("fault")
    seen: list[float] = []
    for second in range(20):
        seen += [0.002] * 100
        if second >= 10:
            seen += fault_lags[(second - 10) :: 10]
        if restart_in_fault and second == 15:
            seen = [0.002] * 100
        run.metrics.append((T0 + second + 0.5, lag_exposition(seen)))
    return run


def test_a_blocked_event_loop_fails_keels_loop_lag_check() -> None:
    assert evaluate_probe(LAG_CHECK, lag_run([0.004] * 40)).passed
    blocked = evaluate_probe(LAG_CHECK, lag_run([0.4] * 40))  # 40 of ~1,000 wake-ups 400 ms late
    assert blocked.tolerance["max"] == pytest.approx(10.0)  # 4 x the 2.5 ms bucket the steady p99 is in
    assert blocked.value == pytest.approx(500.0)  # the bucket 400 ms falls in
    assert not blocked.passed


def test_a_restarted_process_is_counted_from_zero_not_as_a_loss() -> None:
    run = lag_run([0.4] * 40, restart_in_fault=True)
    assert not evaluate_probe(LAG_CHECK, run).passed
    steady_and_fault = sum(count for bound, count in loop_lag_buckets(run, None).items() if bound == math.inf)
    assert steady_and_fault >= 1900  # 19 increases of 100+ wake-ups; none negative


def test_no_loop_lag_measured_never_passes() -> None:
    assert math.isnan(evaluate_probe(LAG_CHECK, new_run("fault")).value)
    assert not evaluate_probe(LAG_CHECK, new_run("fault")).passed


# -- requests -----------------------------------------------------------------------------------


def test_the_healthz_baseline_is_never_finer_than_keels_own_fault_free_loop_lag() -> None:
    """~50 steady polls at 2.5 ms, the loop-lag probe's steady p99 in the 5 ms bucket: the bound is
    4 x 5 ms. A fault p99 of 11.5 ms (a fresh-clone run's) passes; a loop blocked 500 ms does not."""
    run = lag_run([0.004] * 40)
    for second in range(20):  # the steady phase's lag: 100 wake-ups a second, a few at 4-5 ms
        seen = [0.002] * 96 * (second + 1) + [0.0045] * 4 * (second + 1)
        run.metrics[second] = (run.metrics[second][0], lag_exposition(seen))
    run.healthz = polls(T0, 49, seconds=0.0025) + polls(T0 + 10, 190, seconds=0.001)
    run.healthz += polls(T0 + 10.1, 3, seconds=0.0115)
    checked = result("03", "/healthz p99", run)
    assert checked.tolerance["max"] == pytest.approx(20.0), checked.line()
    assert checked.passed, checked.line()
    run.healthz += polls(T0 + 10.2, 4, seconds=0.5)  # 4 of ~250 polls blocked half a second
    assert not result("03", "/healthz p99", run).passed


def test_a_healthz_poll_in_flight_when_the_fault_began_is_not_a_steady_state_failure() -> None:
    run = new_run("fault")
    run.healthz = polls(T0, 100)
    run.healthz.append(HealthzPoll(T0 + 9.999, 2.0, ok=False))  # Keel killed under it at T0 + 10
    assert result("01", "/healthz polls that failed", run).passed
    run.healthz.append(HealthzPoll(T0 + 5.0, 0.01, ok=False))  # failed and answered before it
    assert not result("01", "/healthz polls that failed", run).passed


def test_04_a_connection_lent_out_through_the_last_second_fails_a_brief_one_does_not() -> None:
    key = "keel_db_pool_connections_in_use"
    run = new_run("fault", "recovery")
    run.metrics = [(T0 + 29.0 + i / 10, {key: 0.0}) for i in range(10)]
    run.metrics[-1] = (run.metrics[-1][0], {key: 1.0})  # the relay's poll caught at the end
    assert result("04", "lent out", run).passed
    run.metrics = [(when, {key: 1.0}) for when, _ in run.metrics]  # a leak: lent out throughout
    assert not result("04", "lent out", run).passed
    run.metrics = run.metrics[-2:]  # too few samples to tell: never a pass
    assert not result("04", "lent out", run).passed


def test_02_counts_failures_not_requests() -> None:
    run = new_run("fault", "recovery")
    run.samples = samples("write", T0 + 10, 2)  # two successes during the outage
    assert result("02", "failed uncached reads and writes", run).value == 0
    assert not result("02", "failed uncached reads and writes", run).passed


@pytest.mark.parametrize(
    ("status", "retry_after", "passes"), [(503, True, True), (503, False, False), (500, True, False)]
)
def test_02_failures_must_be_503_with_retry_after(status: int, retry_after: bool, passes: bool) -> None:
    run = new_run("fault", "recovery")
    run.samples = samples("write", T0 + 10, 50, 503, retry_after=True)
    run.samples += samples("read_uncached", T0 + 10, 1, status, retry_after=retry_after)
    assert result("02", "share answered 503 with Retry-After", run).passed is passes


@pytest.mark.parametrize(
    ("status", "passes"), [(503, True), (504, True), (500, False), (502, False), (0, False)]
)
def test_07_any_undocumented_5xx_or_no_answer_fails(status: int, passes: bool) -> None:
    run = new_run("fault", "recovery")
    run.samples = samples("read_cached", T0, 50) + samples("write", T0 + 10, 5, 503)
    run.samples += samples("write", T0 + 25, 1, status)
    assert result("07", "5xx other than 503/504", run).passed is passes


def test_04_a_request_outliving_its_deadline_by_more_than_50_ms_fails() -> None:
    run = new_run("fault", "recovery")
    run.samples = samples("write", T0 + 10, 500, seconds=0.2)
    assert result("04", "longest request", run).passed
    run.samples.append(Sample("write", T0 + 12, 1.051, 503))  # one in 501: p99 would hide it
    assert not result("04", "longest request", run).passed


def test_03_failures_slower_than_the_baseline_factor_fail() -> None:
    run = new_run("fault", "recovery")
    run.samples = samples("read_cached", T0, 100, seconds=0.004)
    run.samples += samples("write", T0 + 10, 100, 503, seconds=0.015)
    assert result("03", "median failure", run).passed
    run.samples += samples("write", T0 + 10, 200, 503, seconds=0.017)
    assert not result("03", "median failure", run).passed


def test_05_a_second_database_read_within_one_freshness_window_fails() -> None:
    run = new_run("fault")
    run.values["stampede_seconds"] = 4.9  # answered within one 5 s window: the claim is one read
    run.values["stampede_db_reads"] = 1
    assert result("05", "database reads", run).passed
    run.values["stampede_db_reads"] = 2
    assert not result("05", "database reads", run).passed
    run.values["stampede_db_reads"] = 0  # nothing read: the copy had not expired, no stampede
    assert not result("05", "database reads", run).passed


def test_05_a_burst_spanning_windows_allows_one_read_per_window_and_no_more() -> None:
    run = new_run("fault")
    run.values["stampede_seconds"] = 19.0  # windows starting at 0, 5, 10, 15 s
    run.values["stampede_db_reads"] = 4
    assert result("05", "database reads", run).passed
    run.values["stampede_db_reads"] = 5
    assert not result("05", "database reads", run).passed
    del run.values["stampede_seconds"]  # span not measured: no bound, never a pass
    assert not result("05", "database reads", run).passed


def test_a_request_caught_in_flight_by_the_fault_is_not_a_steady_state_failure() -> None:
    """The steady phase is fault-free: a write sent just before the kill and answered 504 after
    it is the fault's doing; a failure answered before the fault began still counts."""
    run = new_run("fault", "restarted")
    run.samples = samples("read_cached", T0, 200)
    run.samples += [Sample("write", T0 + 9.98, 0.05, 504)] * 4  # answered at T0 + 10.03
    assert result("07", "success ratio before the fault", run).passed
    run.samples += [Sample("write", T0 + 5.0, 0.05, 504)] * 3  # 3 in 203, answered before it
    assert not result("07", "success ratio before the fault", run).passed


def test_06_a_limiter_admitting_beyond_the_share_fails() -> None:
    run = new_run("fault", "recovery", "outage", "after")
    # Units per second and the burst of this process, and what 4 clients may have in flight
    # as the phase ends (one write each).
    share, burst, in_flight = 10, 10, 4 * 5
    run.samples = samples("read_cached", T0 + 10, share * 10) + samples(
        "write", T0 + 10, (burst + in_flight) // 5
    )
    run.samples += samples("write", T0 + 10, 100, 429)
    run.samples = [
        Sample(s.op, s.started, s.seconds, s.status, retry_after=s.status == 429) for s in run.samples
    ]
    assert result(
        "06", "admitted per second beyond the burst and the last requests in flight, Redis blackholed", run
    ).passed
    assert result("06", "refused 429 by the local share, Redis blackholed", run).passed
    assert result("06", "answered 2xx or 429 + Retry-After, Redis blackholed", run).passed
    run.samples += samples("write", T0 + 10, 2)  # 10 units over the share: writes cost 5
    assert not result(
        "06", "admitted per second beyond the burst and the last requests in flight, Redis blackholed", run
    ).passed


def test_06_after_redis_is_back_429s_count_only_until_the_breaker_closes() -> None:
    run = new_run("fault", "recovery", "outage", "after")
    closed_at = T0 + 42.0
    key = 'keel_circuit_breaker_state{breaker="redis"}'
    run.metrics = [(T0 + 40.5, {key: 2.0}), (closed_at, {key: 0.0})]
    refused = [Sample("write", T0 + 40 + i * 0.1, 0.005, 429, retry_after=True) for i in range(15)]
    run.samples = refused + samples("read_cached", closed_at, 200)
    assert result("06", "success ratio after Redis is back, once", run).passed
    assert result("06", "answered 2xx or 429 + Retry-After, Redis back", run).passed
    assert result("06", "until the Redis breaker closes", run).value == pytest.approx(2.0)
    run.samples += [Sample("read_cached", closed_at + 1, 0.005, 429, retry_after=True)] * 3
    assert not result("06", "success ratio after Redis is back, once", run).passed  # 3 in 203
    run.metrics = [(T0 + 40.5, {key: 2.0}), (T0 + 47.5, {key: 0.0})]
    assert not result("06", "until the Redis breaker closes", run).passed
    run.metrics = [(T0 + 40.5, {key: 2.0})]  # never closed: nothing selected, no pass
    assert not result("06", "success ratio after Redis is back, once", run).passed
    assert not result("06", "until the Redis breaker closes", run).passed


def test_06_a_limiter_that_never_refuses_fails() -> None:
    run = new_run("fault", "recovery", "outage", "after")
    run.samples = samples("read_cached", T0 + 10, 100)
    assert not result("06", "refused 429 by the local share, Redis blackholed", run).passed


def test_nothing_measured_never_passes() -> None:
    run = new_run("fault", "recovery")
    assert math.isnan(result("04", "longest request", run).value)
    assert not result("04", "longest request", run).passed


def test_06_successes_may_wait_out_the_redis_deadline_and_no_more() -> None:
    run = new_run("fault", "outage")
    run.samples = samples("read_cached", T0, 100, seconds=0.020)  # fault-free p99: 20 ms
    run.samples += samples("read_cached", T0 + 10, 100, seconds=0.125)
    checked = result("06", "p99 of successful cached reads, Redis blackholed", run)
    assert checked.tolerance["max"] == pytest.approx(4 * 20 + 50)
    assert checked.passed
    run.samples += samples("read_cached", T0 + 10, 100, seconds=0.131)
    assert not result("06", "p99 of successful cached reads, Redis blackholed", run).passed


def test_06_a_slow_write_does_not_count_against_the_limiters_wait() -> None:
    """The limiter's claim is about its own wait: a write's slow commit is the database's."""
    run = new_run("fault", "outage")
    run.samples = samples("read_cached", T0, 100, seconds=0.020)
    run.samples += samples("read_cached", T0 + 10, 100, seconds=0.030)
    run.samples += samples("write", T0 + 10, 5, seconds=0.205)
    assert result("06", "p99 of successful cached reads, Redis blackholed", run).passed
