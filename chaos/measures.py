"""What an experiment recorded (`Run`) and the measures its checks apply to it.

Kept apart from the runner, which needs servers, so that every measure can be tested on
synthetic samples: a negative control (a known loss, a known stale read, a known 500, a hung
`/healthz`) must make the experiment's own checks fail.

A tolerance is `min` and/or `max`, or `max_times_baseline: k`: the bound is k times the same
measure over the fault-free baseline phase (`baseline_phase`, "steady" by default) of the same
run, so that a latency bound follows the machine's measured noise instead of a number
loosened after a miss; `plus` adds what the fault costs by design (a documented deadline).
`min_scaled` is a minimum multiplied by the run's time scale (phases
shortened for CI make fewer operations). `max_per_window` bounds a count by the windows a
measured span covers (see `_per_window_bound`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from testkit.percentile import percentile

from chaos.traffic import Sample


@dataclass
class Result:
    name: str
    measure: str
    value: float
    tolerance: dict[str, float]
    basis: str = ""  # how a derived bound was derived, for the report

    @property
    def passed(self) -> bool:
        low = self.tolerance.get("min", -math.inf)
        high = self.tolerance.get("max", math.inf)
        return low <= self.value <= high  # NaN (nothing measured) never passes

    def line(self) -> str:
        bounds = " and ".join(
            f"{'≥' if k == 'min' else '≤'} {v:.4g}" for k, v in self.tolerance.items() if k in ("min", "max")
        )
        wanted = f"{bounds}; {self.basis}" if self.basis else bounds
        return f"  [{'pass' if self.passed else 'FAIL'}] {self.name}: {self.value:.4g} (wanted {wanted})"


@dataclass(frozen=True, slots=True)
class HealthzPoll:
    started: float
    seconds: float
    ok: bool  # a 200; an error status, a transport error or a timeout is a failure


@dataclass
class Run:
    """What an experiment recorded, and when each phase began (monotonic seconds)."""

    started: float
    time_scale: float = 1.0
    phases: list[tuple[float, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    healthz: list[HealthzPoll] = field(default_factory=list)
    metrics: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    acknowledged: list[float] = field(default_factory=list)  # when each history write was acknowledged
    # (when, how many committed events were not yet published), for experiments with events
    unpublished: list[tuple[float, int]] = field(default_factory=list)
    ended: float = 0.0

    def phase_at(self, when: float) -> str:
        current = "steady"
        for start, phase in self.phases:
            if start <= when:
                current = phase
        return current

    def phase_start(self, phase: str) -> float:
        return next((start for start, name in self.phases if name == phase), math.nan)

    def phase_seconds(self, phase: str) -> float:
        """Total time spent in `phase` (phases may repeat), up to the end of the run."""
        bounds = [(self.started, "steady"), *self.phases, (self.ended, "")]
        return sum(bounds[i + 1][0] - bounds[i][0] for i in range(len(bounds) - 1) if bounds[i][1] == phase)


def evaluate(spec: dict[str, Any], run: Run) -> list[Result]:
    """Every probe of the steady-state hypothesis and every check of `spec`, on `run`; plus the
    checks every experiment gets: no workload crashed."""
    probes = [*spec["steady-state-hypothesis"]["probes"], *spec.get("checks", [])]
    results = [evaluate_probe(probe, run) for probe in probes]
    crashed = run.values.get("workloads_crashed", 0.0)
    results.append(Result("workloads that crashed", "value", crashed, {"max": 0}))
    return results


def evaluate_probe(probe: dict[str, Any], run: Run) -> Result:
    measure = probe["measure"]
    where = probe.get("where", {})
    value = MEASURES[measure](run, where)
    tolerance = {k: float(v) for k, v in probe["tolerance"].items() if k in ("min", "max")}
    basis = ""
    if "min_scaled" in probe["tolerance"]:
        tolerance["min"] = math.ceil(float(probe["tolerance"]["min_scaled"]) * run.time_scale)
        if run.time_scale != 1.0:
            basis = f"minimum scaled by the phases' time scale {run.time_scale:g}"
    if "max_times_baseline" in probe["tolerance"]:
        factor = float(probe["tolerance"]["max_times_baseline"])
        baseline_where = {**where, "phase": probe["tolerance"].get("baseline_phase", "steady")}
        baseline_where.update(probe["tolerance"].get("baseline_where", {}))
        baseline = MEASURES[measure](run, baseline_where)
        # `baseline_floor`: a measure of the same fault-free phase under which the baseline is not
        # taken to be resolved (a p99 of ~50 polls is under what Keel's own loop-lag probe, with
        # ~100 wake-ups a second, shows the machine's noise to be).
        floor_name = probe["tolerance"].get("baseline_floor")
        floor_note = ""
        if floor_name is not None:
            floor = MEASURES[floor_name](run, {"phase": baseline_where["phase"]})
            if math.isfinite(floor) and floor > baseline:
                floor_note = f" (its {floor_name}, over the measured {baseline:.4g})"
                baseline = floor
        # `plus`: what the fault adds by design (a deadline a request may wait out before it is
        # answered another way), stated in the check's name, never fitted to a run.
        plus = float(probe["tolerance"].get("plus", 0))
        tolerance["max"] = factor * baseline + plus
        basis = f"{factor:g} x the fault-free baseline {baseline:.4g}{floor_note}" + (
            f" + {plus:g}" if plus else ""
        )
    if "max_per_window" in probe["tolerance"]:
        tolerance["max"], basis = _per_window_bound(probe["tolerance"], run)
    return Result(probe["name"], measure, value, tolerance, basis)


def _per_window_bound(tolerance: dict[str, Any], run: Run) -> tuple[float, str]:
    """`max_per_window: n` per `window_seconds` that the run value `span_key` (seconds) spans:
    n x (1 + floor(span / window)). A claim such as "one database read per freshness window":
    a cached copy is fresh for `window_seconds` from the read that made it, so a burst of
    requests answered over a longer span (a loaded machine) may need one read per window."""
    per = float(tolerance["max_per_window"])
    window = float(tolerance["window_seconds"])
    span = run.values.get(tolerance["span_key"], math.nan)
    windows = 1 + math.floor(span / window) if math.isfinite(span) else math.nan
    basis = f"{per:g} per {window:g} s window; the burst spanned {span:.3g} s, {windows:g} window(s)"
    return per * windows, basis


def _breaker_closed_at(run: Run, phase: str, breaker: str) -> float:
    """When `breaker` was first seen closed again after the start of `phase` (inf: never)."""
    start = run.phase_start(phase)
    key = f'keel_circuit_breaker_state{{breaker="{breaker}"}}'
    return next((when for when, values in run.metrics if when >= start and values.get(key) == 0.0), math.inf)


def _matches(s: Sample, match: dict[str, Any]) -> bool:
    """`ok`: any 2xx matches; `statuses`: these statuses match, with a Retry-After header when
    `retry_after` is true."""
    if match.get("ok") and s.ok:
        return True
    return s.status in match.get("statuses", ()) and (not match.get("retry_after") or s.retry_after)


def _selected(run: Run, where: dict[str, Any]) -> list[Sample]:
    ops = where.get("ops")
    phase = where.get("phase")
    statuses = where.get("statuses")
    outcome = where.get("outcome", "any")
    # "Server errors": no answer at all, or any 5xx but the documented ones listed here.
    documented = where.get("server_errors_except")
    # Only requests that started once this breaker was seen closed again within the phase.
    closed = where.get("since_breaker_closed")
    since = None
    if closed is not None:
        if phase is None:
            raise ValueError("since_breaker_closed needs a phase to look for the breaker in")
        since = _breaker_closed_at(run, phase, closed)
    # "steady" is fault-free: a request still in flight when the first fault began (answered
    # 503/504 by a core killed under it, say) belongs to no phase's fault-free figures.
    fault_free_until = run.phases[0][0] if phase == "steady" and run.phases else math.inf
    return [
        s
        for s in run.samples
        if (ops is None or s.op in ops)
        and (phase is None or run.phase_at(s.started) == phase)
        and (statuses is None or s.status in statuses)
        and (outcome == "any" or (outcome == "ok") == s.ok)
        and (documented is None or s.status == 0 or (s.status >= 500 and s.status not in documented))
        and (since is None or s.started >= since)
        and s.started + s.seconds < fault_free_until
    ]


def _success_ratio(run: Run, where: dict[str, Any]) -> float:
    samples = _selected(run, where)
    return sum(s.ok for s in samples) / len(samples) if samples else math.nan


def _share(run: Run, where: dict[str, Any]) -> float:
    """Of the selected samples, the share that `where["match"]` describes (see `_matches`)."""
    samples = _selected(run, where)
    return sum(_matches(s, where["match"]) for s in samples) / len(samples) if samples else math.nan


def _stale_ratio(run: Run, where: dict[str, Any]) -> float:
    served = [s for s in _selected(run, where) if s.ok]
    return sum(s.stale for s in served) / len(served) if served else math.nan


def _latency_ms(run: Run, where: dict[str, Any]) -> float:
    """A quantile (`quantile`, 0.99 by default; 1.0 is the longest) of request latency, of ok
    or failed requests (`outcome`) or all of them."""
    samples = [s.seconds for s in _selected(run, where)]
    return percentile(samples, where.get("quantile", 0.99) * 100) * 1000


def _count(run: Run, where: dict[str, Any]) -> float:
    return float(len(_selected(run, where)))


def _rate_per_second(run: Run, where: dict[str, Any]) -> float:
    """Selected requests per second of their phase (`phase` is required), after taking `less`
    away from their count (a rate limit's burst, spent once). With `costs` (operation ->
    units, 1 for any other), units per second instead: what a rate limiter counts."""
    seconds = run.phase_seconds(where["phase"])
    costs = where.get("costs", {})
    units = sum(costs.get(s.op, 1) for s in _selected(run, where))
    return (units - where.get("less", 0)) / seconds if seconds > 0 else math.nan


def _recovery_seconds(run: Run, where: dict[str, Any]) -> float:
    """From the start of the recovery phase until every later 1 s window of traffic meets the
    success ratio `slo`."""
    start = run.phase_start(where.get("phase", "recovery"))
    slo = where.get("slo", 0.99)
    windows: dict[int, list[bool]] = {}
    for s in run.samples:
        if s.started >= start:
            windows.setdefault(int(s.started - start), []).append(s.ok)
    recovered = 0
    for second in sorted(windows):
        outcomes = windows[second]
        if sum(outcomes) / len(outcomes) < slo:
            recovered = second + 1
    return float(recovered) if windows else math.nan


def _healthz_polls(run: Run, where: dict[str, Any]) -> list[HealthzPoll]:
    """The polls started in `phase`; of the fault-free "steady" phase, only those answered before
    the first fault began (a poll in flight when Keel is killed fails by the fault's doing, as
    `_selected` treats requests)."""
    phase = where.get("phase")
    fault_free_until = run.phases[0][0] if phase == "steady" and run.phases else math.inf
    return [
        p
        for p in run.healthz
        if (phase is None or run.phase_at(p.started) == phase) and p.started + p.seconds < fault_free_until
    ]


def _healthz_p99_ms(run: Run, where: dict[str, Any]) -> float:
    """p99 of `/healthz` latency; a failed poll (error, timeout) counts as infinitely slow, so
    more than 1 % of them fails any bound."""
    polls = _healthz_polls(run, where)
    return percentile([p.seconds if p.ok else math.inf for p in polls], 99) * 1000


def _healthz_failures(run: Run, where: dict[str, Any]) -> float:
    polls = _healthz_polls(run, where)
    return float(sum(not p.ok for p in polls)) if polls else math.nan


_LOOP_LAG = "keel_event_loop_lag_seconds"


def _bucket_bound(key: str) -> float:
    """The `le` of a histogram bucket's key, `name_bucket{le="0.005"}`."""
    return float(key.rpartition('le="')[2].rstrip('"}'))


def loop_lag_buckets(run: Run, phase: str | None, histogram: str = _LOOP_LAG) -> dict[float, float]:
    """How many of Keel's loop-lag probe wake-ups fell at or under each bucket bound during
    `phase` (every phase for None), from the `/metrics` samples: each sample's increase over the
    one before it belongs to the phase the sample was taken in. A count that fell is a restarted
    process, counted from zero (Prometheus's `increase`). The first sample has nothing before it
    and counts for nothing (it holds the process's start-up and warm-up)."""
    increases: dict[float, float] = {}
    previous: dict[float, float] | None = None
    for when, values in run.metrics:
        buckets = {_bucket_bound(k): v for k, v in values.items() if k.startswith(histogram + "_bucket{")}
        if not buckets:
            continue
        if previous is not None and (phase is None or run.phase_at(when) == phase):
            restarted = buckets.get(math.inf, 0.0) < previous.get(math.inf, 0.0)
            for bound, count in buckets.items():
                increase = count if restarted else count - previous.get(bound, 0.0)
                increases[bound] = increases.get(bound, 0.0) + increase
        previous = buckets
    return increases


def _loop_lag_quantile_ms(run: Run, where: dict[str, Any]) -> float:
    """Keel's own event-loop lag at a quantile (`quantile`, 0.99 by default) over a phase, as
    the upper bound of the histogram bucket it falls in (`inf` past the last bound; NaN when no
    wake-up was counted). The server's view, which no client's own delay can inflate. Another
    of Keel's histograms (in seconds) with `histogram`, e.g. the relay's lag."""
    buckets = loop_lag_buckets(run, where.get("phase"), where.get("histogram", _LOOP_LAG))
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    wanted = where.get("quantile", 0.99) * total
    return next(bound for bound, count in sorted(buckets.items()) if count >= wanted) * 1000


def healthz_figures(run: Run) -> str:
    """Per phase: the `/healthz` polls' p50 / p99 / longest (a failed poll counts as infinitely
    slow) and Keel's own loop-lag p99 (bucket bound), for the report; the checks pick theirs."""
    lines = ["/healthz (own-process poller) p50 / p99 / max, and Keel's event-loop lag p99, by phase:"]
    for phase in dict.fromkeys(["steady", *(name for _, name in run.phases)]):
        polls = [p.seconds if p.ok else math.inf for p in _healthz_polls(run, {"phase": phase})]
        if not polls:
            continue
        latency = " / ".join(f"{percentile(polls, q) * 1000:.1f}" for q in (50, 99, 100))
        lag = _loop_lag_quantile_ms(run, {"phase": phase})
        lines.append(f"  {phase}: {latency} ms over {len(polls)} polls; loop lag p99 ≤ {lag:g} ms")
    return "\n".join(lines)


def _breaker_opened_after_seconds(run: Run, where: dict[str, Any]) -> float:
    start = run.phase_start(where.get("phase", "fault"))
    key = f'keel_circuit_breaker_state{{breaker="{where.get("breaker", "database")}"}}'
    for when, values in run.metrics:
        if when >= start and values.get(key) == 2.0:
            return when - start
    return math.inf


def _breaker_closed_after_seconds(run: Run, where: dict[str, Any]) -> float:
    phase = where.get("phase", "recovery")
    return _breaker_closed_at(run, phase, where.get("breaker", "database")) - run.phase_start(phase)


def _acknowledged_writes(run: Run, where: dict[str, Any]) -> float:
    """History writes (creates, updates, deletes) acknowledged during the phases `phases`."""
    phases = where["phases"]
    return float(sum(1 for when in run.acknowledged if run.phase_at(when) in phases))


def _metric_at_end(run: Run, where: dict[str, Any]) -> float:
    return run.metrics[-1][1].get(where["metric"], math.nan) if run.metrics else math.nan


def _metric_settled(run: Run, where: dict[str, Any]) -> float:
    """The smallest value of a gauge over the run's last `seconds` of `/metrics` samples: what
    stayed for all of that time. A connection leaked stays lent out at every sample; one a
    background job (the outbox relay, the webhook dispatcher, the erasure runner: each polls
    about once a second) holds for a few milliseconds is not seen at every one. NaN with fewer
    than `samples` (3 by default) samples in that span."""
    seconds = float(where.get("seconds", 1.0))
    last = run.metrics[-1][0] if run.metrics else math.nan
    values = [
        v[where["metric"]] for when, v in run.metrics if when >= last - seconds and where["metric"] in v
    ]
    return min(values) if len(values) >= int(where.get("samples", 3)) else math.nan


def _value(run: Run, where: dict[str, Any]) -> float:
    return run.values.get(where["key"], math.nan)


MEASURES = {
    "success_ratio": _success_ratio,
    "share": _share,
    "stale_ratio": _stale_ratio,
    "latency_ms": _latency_ms,
    "count": _count,
    "rate_per_second": _rate_per_second,
    "recovery_seconds": _recovery_seconds,
    "healthz_p99_ms": _healthz_p99_ms,
    "healthz_failures": _healthz_failures,
    "keel_loop_lag_ms": _loop_lag_quantile_ms,
    "histogram_quantile_ms": _loop_lag_quantile_ms,
    "breaker_opened_after_seconds": _breaker_opened_after_seconds,
    "breaker_closed_after_seconds": _breaker_closed_after_seconds,
    "metric_at_end": _metric_at_end,
    "metric_settled": _metric_settled,
    "value": _value,
    "acknowledged_writes": _acknowledged_writes,
}
