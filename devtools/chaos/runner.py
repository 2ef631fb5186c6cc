"""Runs one experiment written as data (chaos/experiments/*.json), in the spirit of Chaos
Toolkit's format: a steady-state hypothesis checked before the faults, a method (the faults,
in order, with pauses), rollbacks that always run, and checks on what was measured.

Every figure comes from this run: the traffic's recorded requests, a /healthz poller, a
/metrics poller (breaker states, database reads), and, for write workloads, the Jepsen-style
history checked against the database's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from bench.harness import seed_profiles
from bench.loadgen import percentile

from devtools.chaos.system import System
from devtools.chaos.traffic import Sample, Traffic, warm
from devtools.history import History, check
from devtools.workload import final_state, run_workload

_METRIC_LINE = re.compile(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.e+-]+|NaN|\+Inf)$")


@dataclass
class Result:
    name: str
    measure: str
    value: float
    tolerance: dict[str, float]

    @property
    def passed(self) -> bool:
        low = self.tolerance.get("min", -math.inf)
        high = self.tolerance.get("max", math.inf)
        return low <= self.value <= high

    def line(self) -> str:
        bounds = " and ".join(
            f"{'≥' if k == 'min' else '≤'} {v:g}" for k, v in self.tolerance.items() if k in ("min", "max")
        )
        return f"  [{'pass' if self.passed else 'FAIL'}] {self.name}: {self.value:.4g} (wanted {bounds})"


@dataclass
class Run:
    """What an experiment recorded, and when each phase began (monotonic seconds)."""

    started: float
    phases: list[tuple[float, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    healthz: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds)
    metrics: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    ended: float = 0.0

    def phase_at(self, when: float) -> str:
        current = "steady"
        for start, phase in self.phases:
            if start <= when:
                current = phase
        return current

    def phase_start(self, phase: str) -> float:
        return next((start for start, name in self.phases if name == phase), math.nan)


async def run_experiment(spec: dict[str, Any], *, seed: int = 1) -> tuple[bool, list[Result], dict[str, str]]:
    """Run the experiment `spec` (a decoded experiment file): (all checks passed, the results,
    text reports such as the history checker's summary)."""
    system_spec = spec.get("system", {})
    keel_env = system_spec.get("keel", {})
    split = system_spec.get("split", False)
    async with System(keel_env, redis=system_spec.get("redis", False), seed=seed, split=split) as system:
        run = Run(started=time.monotonic())
        setup = spec.get("setup", {})
        cached, uncached = await _seed(system, setup)
        await warm(system.base_url, system.token, cached)
        history = History()
        workloads = spec.get("workloads", {})
        traffic = None
        if "traffic" in workloads:
            config = workloads["traffic"]
            traffic = Traffic(
                system.base_url,
                system.token,
                cached,
                uncached,
                config["mix"],
                clients=config.get("clients", 4),
                timeout_seconds=config.get("timeout_seconds", 5.0),
                seed=seed,
            )
        stop_polling = asyncio.Event()
        pollers = [
            asyncio.create_task(_poll_healthz(system, run, stop_polling)),
            asyncio.create_task(_poll_metrics(system, run, stop_polling)),
        ]
        method_seconds = sum(step.get("pauses", {}).get("before", 0) for step in spec["method"])
        tail = spec.get("tail_seconds", 10)
        running: list[asyncio.Task[Any]] = []
        if traffic is not None:
            running.append(asyncio.create_task(traffic.run()))
        if "history" in workloads:
            config = workloads["history"]
            running.append(
                asyncio.create_task(
                    run_workload(
                        system.base_url,
                        system.token,
                        clients=config.get("clients", 2),
                        duration_s=method_seconds + tail,
                        seed=seed,
                        mix=config.get("mix", {"create": 0.3, "update": 0.4, "read": 0.3}),
                        request_timeout_s=config.get("timeout_seconds", 5.0),
                        history=history,
                        create_grace_s=config.get("create_grace_seconds", 20.0),
                    )
                )
            )
        try:
            await _method(system, run, spec["method"])
            await asyncio.sleep(tail)
        finally:
            for step in spec.get("rollbacks", []):
                with contextlib.suppress(Exception):
                    await system.act(step["action"], step["target"], step.get("args", {}))
            if traffic is not None:
                traffic.stop()
            run.ended = time.monotonic()
            for outcome in await asyncio.gather(*running, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    print(f"  a workload failed: {outcome!r}", flush=True)
            await asyncio.sleep(1.0)  # let in-flight work settle before the last metrics sample
            stop_polling.set()
            await asyncio.gather(*pollers)
        if traffic is not None:
            run.samples = traffic.samples
        if "history" in workloads:
            report = check(history, await final_state(system.database_url))
            run.values["history_violations"] = len(report.violations)
            run.values["acknowledged_writes"] = float(_acknowledged_writes(history))
            details = {"history": report.summary()}
        else:
            details = {}
    failures = _failures(run)
    if failures:  # by phase, operation and status
        details["failures"] = failures
    results = [_evaluate(probe, run) for probe in spec["steady-state-hypothesis"]["probes"]]
    results += [_evaluate(probe, run) for probe in spec.get("checks", [])]
    return all(r.passed for r in results), results, details


async def _seed(system: System, setup: dict[str, int]) -> tuple[list[str], list[str]]:
    cached_count = setup.get("cached_profiles", 0)
    uncached_count = setup.get("uncached_profiles", 0)
    total = cached_count + uncached_count
    if total == 0:
        return [], []
    _, ids = await seed_profiles(system.database_url, total, "eu1")
    return ids[:cached_count], ids[cached_count:total]


async def _method(system: System, run: Run, steps: list[dict[str, Any]]) -> None:
    for step in steps:
        await asyncio.sleep(step.get("pauses", {}).get("before", 0))
        if "phase" in step:
            run.phases.append((time.monotonic(), step["phase"]))
        if step["target"] == "runner":
            await _runner_action(system, run, step)
        else:
            await system.act(step["action"], step["target"], step.get("args", {}))


async def _runner_action(system: System, run: Run, step: dict[str, Any]) -> None:
    if step["action"] != "stampede":
        raise ValueError(f"unknown runner action {step['action']!r}")
    args = step.get("args", {})
    concurrency = int(args.get("concurrency", 500))
    profile_id = (await _seed(system, {"cached_profiles": 1}))[0][0]
    async with httpx.AsyncClient(
        base_url=system.base_url,
        headers={"Authorization": f"Bearer {system.token}"},
        timeout=30.0,
        limits=httpx.Limits(max_connections=concurrency),
    ) as client:
        await client.get(f"/v1/profiles/{profile_id}")  # cached now
        await asyncio.sleep(float(args.get("expire_after_seconds", 1.5)))  # and expired
        # Connections opened first, so the requests reach Keel together and not in connect order.
        await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency)), return_exceptions=True)
        before = await _metric_sum(client, "keel_db_query_duration_seconds_count", 'operation="get_profile"')
        coalesced = await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="coalesced"')
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.get(f"/v1/profiles/{profile_id}") for _ in range(concurrency)), return_exceptions=True
        )
        run.samples += [
            Sample("stampede", started, 0.0, r.status_code if isinstance(r, httpx.Response) else 0)
            for r in responses
        ]
        after = await _metric_sum(client, "keel_db_query_duration_seconds_count", 'operation="get_profile"')
        coalesced = (
            await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="coalesced"') - coalesced
        )
    errors = [r for r in responses if not isinstance(r, httpx.Response)]
    run.values["stampede_transport_errors"] = len(errors)
    if errors:
        print(f"  stampede: {len(errors)} requests got no answer, e.g. {errors[0]!r}", flush=True)
    run.values["stampede_db_reads"] = after - before
    run.values["stampede_coalesced"] = coalesced


async def _metric_sum(client: httpx.AsyncClient, name: str, label: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(value for key, value in _parse_metrics(text).items() if key.startswith(name) and label in key)


def _parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


async def _poll_healthz(system: System, run: Run, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=2.0) as client:
        while not stop.is_set():
            started = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    run.healthz.append((started, time.monotonic() - started))
            await asyncio.sleep(0.05)


async def _poll_metrics(system: System, run: Run, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=2.0) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get("/metrics")
                run.metrics.append((time.monotonic(), _parse_metrics(response.text)))
            await asyncio.sleep(0.1)


def _failures(run: Run) -> str:
    """Failed requests counted by phase, operation and status (0: no HTTP answer)."""
    counts: dict[tuple[str, str, int, str], int] = {}
    for s in run.samples:
        if not s.ok:
            key = (run.phase_at(s.started), s.op, s.status, s.problem)
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    return "failures (phase/operation/status/problem): " + ", ".join(
        f"{phase}/{op}/{status}/{problem or '-'}: {n}"
        for (phase, op, status, problem), n in sorted(counts.items())
    )


def _acknowledged_writes(history: History) -> int:
    return sum(1 for op in history.ops if op.type == "ok" and op.f in ("create", "update", "delete"))


# -- measures ------------------------------------------------------------------------------


def _evaluate(probe: dict[str, Any], run: Run) -> Result:
    measure = probe["measure"]
    where = probe.get("where", {})
    value = _MEASURES[measure](run, where)
    return Result(probe["name"], measure, value, probe["tolerance"])


def _selected(run: Run, where: dict[str, Any]) -> list[Sample]:
    ops = where.get("ops")
    phase = where.get("phase")
    statuses = where.get("statuses")
    return [
        s
        for s in run.samples
        if (ops is None or s.op in ops)
        and (phase is None or run.phase_at(s.started) == phase)
        and (statuses is None or s.status in statuses)
    ]


def _success_ratio(run: Run, where: dict[str, Any]) -> float:
    samples = _selected(run, where)
    return sum(s.ok for s in samples) / len(samples) if samples else math.nan


def _stale_ratio(run: Run, where: dict[str, Any]) -> float:
    served = [s for s in _selected(run, where) if s.ok]
    return sum(s.stale for s in served) / len(served) if served else math.nan


def _latency_ms(run: Run, where: dict[str, Any]) -> float:
    """A quantile (`quantile`, 0.99 by default) of request latency, of ok or failed requests
    (`outcome`) or all of them."""
    outcome = where.get("outcome", "any")
    samples = [s.seconds for s in _selected(run, where) if outcome == "any" or (outcome == "ok") == s.ok]
    return percentile(samples, where.get("quantile", 0.99) * 100) * 1000


def _count(run: Run, where: dict[str, Any]) -> float:
    return float(len(_selected(run, where)))


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


def _healthz_p99_ms(run: Run, where: dict[str, Any]) -> float:
    phase = where.get("phase")
    samples = [seconds for started, seconds in run.healthz if phase is None or run.phase_at(started) == phase]
    return percentile(samples, 99) * 1000


def _breaker_opened_after_seconds(run: Run, where: dict[str, Any]) -> float:
    start = run.phase_start(where.get("phase", "fault"))
    key = f'keel_circuit_breaker_state{{breaker="{where.get("breaker", "database")}"}}'
    for when, values in run.metrics:
        if when >= start and values.get(key) == 2.0:
            return when - start
    return math.inf


def _metric_at_end(run: Run, where: dict[str, Any]) -> float:
    return run.metrics[-1][1].get(where["metric"], math.nan) if run.metrics else math.nan


def _value(run: Run, where: dict[str, Any]) -> float:
    return run.values.get(where["key"], math.nan)


_MEASURES = {
    "success_ratio": _success_ratio,
    "stale_ratio": _stale_ratio,
    "latency_ms": _latency_ms,
    "count": _count,
    "recovery_seconds": _recovery_seconds,
    "healthz_p99_ms": _healthz_p99_ms,
    "breaker_opened_after_seconds": _breaker_opened_after_seconds,
    "metric_at_end": _metric_at_end,
    "value": _value,
}
