"""Runs one experiment written as data (experiments/*.json beside this module), in the spirit of Chaos
Toolkit's format: a steady-state hypothesis checked before the faults, a method (the faults,
in order, with pauses), rollbacks that always run, and checks on what was measured.

Every figure comes from this run: the traffic's recorded requests, a /healthz poller in a
process of its own (chaos/healthz_poller.py: this process's event loop also drives the traffic,
the fault proxies and the /metrics poller, whose delays a poll sharing it would count as
Keel's), a /metrics poller (breaker states, database reads, Keel's own event-loop lag), and, for
write workloads, the Jepsen-style history checked against the database's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
from testkit.history import CheckReport, History, check
from testkit.percentile import percentile
from testkit.seed import seed_profiles
from testkit.workload import final_state, run_workload

from chaos import erasure, events, stampede, webhooks
from chaos.healthz_poller import Poll, polling
from chaos.measures import MEASURES, HealthzPoll, Result, Run, evaluate, healthz_figures
from chaos.system import System
from chaos.traffic import Sample, Traffic, warm

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
HEALTHZ_TIMEOUT_SECONDS = 2.0
RUNNER_PROBE_SECONDS = 0.005
_METRIC_LINE = re.compile(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.e+-]+|NaN|\+Inf)$")


async def run_experiment(
    spec: dict[str, Any],
    *,
    seed: int = 1,
    time_scale: float = 1.0,
    spawned: list[int] | None = None,
    compare_pollers: bool = False,
) -> tuple[bool, list[Result], dict[str, str]]:
    """Run the experiment `spec` (a decoded experiment file): (all checks passed, the results,
    text reports such as the history checker's summary and the `/healthz` figures). `time_scale`
    multiplies every pause and the tail (CI runs shortened phases); minimums marked `min_scaled`
    follow it. `spawned` receives the pid of every process the experiment started (servers and
    the `/healthz` poller), to check none outlives it. `compare_pollers` also polls `/healthz`
    from this process's own event loop, recording that loop's lag, and reports both pollers
    (a diagnostic: the checks read only the poller of its own)."""
    system_spec = spec.get("system", {})
    keel_env = system_spec.get("keel", {})
    split = system_spec.get("split", False)
    system = System(
        keel_env,
        redis=system_spec.get("redis", False),
        seed=seed,
        split=split,
        nats=system_spec.get("nats", False),
    )
    helpers: list[int] = []
    try:
        return await _run_in(system, spec, seed, time_scale, helpers, compare_pollers)
    finally:
        if spawned is not None:
            spawned += system.spawned + helpers


async def _run_in(
    system: System,
    spec: dict[str, Any],
    seed: int,
    time_scale: float,
    helpers: list[int],
    compare_pollers: bool,
) -> tuple[bool, list[Result], dict[str, str]]:
    async with system:
        print(f"  system up: {', '.join(system.running())}", flush=True)
        healthz_file = system.keel_log.with_name("healthz-polls.txt")
        with polling(
            system.keel_port, healthz_file, timeout=HEALTHZ_TIMEOUT_SECONDS, started=helpers
        ) as polls:
            async with _scenarios(spec, system, helpers) as scenarios:
                return await _run_with_poller(
                    system, spec, seed, time_scale, polls, compare_pollers, scenarios
                )


class Scenario(Protocol):
    """Set-up beyond the system that an experiment's method acts on (its steps with this
    scenario's target) and whose figures it adds after the run."""

    async def act(self, action: str, args: dict[str, Any], values: dict[str, float]) -> None: ...

    async def finish(self, database_url: str, values: dict[str, float], samples: list[Sample]) -> str: ...


@contextlib.asynccontextmanager
async def _scenarios(
    spec: dict[str, Any], system: System, helpers: list[int]
) -> AsyncIterator[dict[str, Scenario]]:
    """The experiment's scenarios by target: `webhooks` (endpoints served by a receiver process,
    chaos/webhooks.py) and `erasure` (profiles erased under faults, chaos/erasure.py). Both act
    as an admin."""
    if "webhooks" not in spec and "erasure" not in spec:
        yield {}
        return
    async with contextlib.AsyncExitStack() as stack:
        admin = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=system.base_url,
                headers={"Authorization": f"Bearer {await system.issue_key('admin')}"},
                timeout=10.0,
            )
        )
        scenarios: dict[str, Scenario] = {}
        if "webhooks" in spec:
            names = list(spec["webhooks"]["endpoints"])
            receivers = stack.enter_context(webhooks.receiving(names, system.keel_log.parent, helpers))
            await webhooks.register(admin, receivers, spec["webhooks"])
            schedule = webhooks.schedule_of(spec["system"]["keel"])
            scenarios["webhooks"] = webhooks.Scenario(receivers, admin, schedule, spec["webhooks"])
        if "erasure" in spec:
            erasing = await erasure.prepared(admin, system, spec["erasure"])
            stack.push_async_callback(erasing.close)
            scenarios["erasure"] = erasing
        yield scenarios


async def _run_with_poller(
    system: System,
    spec: dict[str, Any],
    seed: int,
    time_scale: float,
    polls: Callable[[], list[Poll]],
    compare_pollers: bool,
    scenarios: dict[str, Scenario],
) -> tuple[bool, list[Result], dict[str, str]]:
    run = Run(started=time.monotonic(), time_scale=time_scale)
    setup = spec.get("setup", {})
    cached, uncached = await _seed(system, setup)
    await warm(system.base_url, system.token, cached)
    run.started = time.monotonic()
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
    pollers = [asyncio.create_task(_poll_metrics(system, run, stop_polling))]
    if "events" in spec:
        pollers.append(
            asyncio.create_task(events.count_unpublished(system.database_url, run.unpublished, stop_polling))
        )
    in_loop: list[HealthzPoll] = []
    runner_lag: list[tuple[float, float]] = []
    if compare_pollers:
        pollers += [
            asyncio.create_task(_poll_healthz(system, in_loop, stop_polling)),
            asyncio.create_task(_watch_loop_lag(runner_lag, stop_polling)),
        ]
    method_seconds = sum(step.get("pauses", {}).get("before", 0) for step in spec["method"]) * time_scale
    tail = spec.get("tail_seconds", 10) * time_scale
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
                    mix=config.get("mix", {"create": 0.3, "update": 0.4, "read": 0.3, "delete": 0.05}),
                    request_timeout_s=config.get("timeout_seconds", 5.0),
                    history=history,
                    create_grace_s=config.get("create_grace_seconds", 20.0),
                )
            )
        )
    completed = False
    try:
        await _method(system, run, spec["method"], time_scale, scenarios)
        await asyncio.sleep(tail)
        completed = True
    finally:
        for step in spec.get("rollbacks", []):
            with contextlib.suppress(Exception):
                await system.act(step["action"], step["target"], step.get("args", {}))
        if traffic is not None:
            traffic.stop()
        run.ended = time.monotonic()
        if not completed:  # a failed step or Ctrl-C: stop everything, the servers go next
            for task in (*running, *pollers):
                task.cancel()
        crashed = 0
        for outcome in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(outcome, BaseException):
                crashed += 1
                print(f"  a workload crashed: {outcome!r}", flush=True)
        run.values["workloads_crashed"] = float(crashed)
        if completed:
            await asyncio.sleep(1.0)  # let in-flight work settle before the last metrics sample
        stop_polling.set()
        await asyncio.gather(*pollers, return_exceptions=True)
        # The poller started with the system; the run (and its steady phase) once it was warm.
        run.healthz = [
            HealthzPoll(p.started, p.seconds, p.ok)
            for p in await asyncio.to_thread(polls)
            if p.started >= run.started
        ]
    if traffic is not None:
        run.samples += traffic.samples
    details: dict[str, str] = {}
    if "history" in workloads:
        report = check(history, await final_state(system.database_url))
        record_history(run, history, report)
        details["history"] = report.summary()
    if "events" in spec:
        details["events"] = await _check_events(system, run, spec["events"])
    for target, scenario in scenarios.items():
        details[target] = await scenario.finish(system.database_url, run.values, run.samples)
    failures = _failures(run)
    if failures:  # by phase, operation and status
        details["failures"] = failures
    details["healthz"] = healthz_figures(run)
    if compare_pollers:
        details["pollers"] = compare_healthz_pollers(run, in_loop, runner_lag)
    results = evaluate(spec, run)
    return all(r.passed for r in results), results, details


async def _check_events(system: System, run: Run, config: dict[str, Any]) -> str:
    """Waits for the relay to publish what the run committed (timed from the start of the phase
    the fault cleared in), then compares the outbox with the stream (chaos/events.py)."""
    if system.nats is None:
        raise ValueError('an experiment with `events` needs `"nats": true` in its system')
    phase = config.get("drained_from_phase", "recovery")
    # The last time the fault cleared (an experiment may fault and recover several times).
    since = max((start for start, name in run.phases if name == phase), default=run.ended)
    run.values["events_drain_seconds"] = await events.drain_seconds(
        system.database_url, run.unpublished, since, float(config.get("drain_timeout_seconds", 60))
    )
    committed = await events.committed_ids(system.database_url)
    stream = await events.stream_messages(system.nats.url, config.get("stream", "KEEL_EVENTS"))
    run.values.update(events.compare(committed, stream))
    lag = MEASURES["histogram_quantile_ms"](run, {"histogram": "keel_outbox_relay_lag_seconds"})
    return f"{events.summary(run.values)}; relay lag (commit to acknowledged publish) p99 ≤ {lag:g} ms"


def record_history(run: Run, history: History, report: CheckReport) -> None:
    """The history's figures the checks read: every violation, real-time stale reads included,
    and how many writes were acknowledged (so that "0 violations" cannot come from an empty
    history)."""
    run.values["history_violations"] = float(len(report.violations) + len(report.realtime))
    run.values["realtime_stale_reads"] = float(len(report.realtime))
    run.values["acknowledged_writes"] = float(_acknowledged_writes(history))
    run.acknowledged = [
        op.time for op in history.ops if op.type == "ok" and op.f in ("create", "update", "delete")
    ]
    run.values["creates_retried_ok"] = float(
        sum(
            1
            for op in history.ops
            if op.type == "ok" and op.f == "create" and op.value.get("attempts", 1) > 1
        )
    )
    run.values["acknowledged_deletes"] = float(
        sum(1 for op in history.ops if op.type == "ok" and op.f == "delete")
    )


async def _seed(system: System, setup: dict[str, int]) -> tuple[list[str], list[str]]:
    cached_count = setup.get("cached_profiles", 0)
    uncached_count = setup.get("uncached_profiles", 0)
    total = cached_count + uncached_count
    if total == 0:
        return [], []
    _, ids = await seed_profiles(system.database_url, total, "eu1")
    return ids[:cached_count], ids[cached_count:total]


async def _method(
    system: System,
    run: Run,
    steps: list[dict[str, Any]],
    time_scale: float,
    scenarios: dict[str, Scenario] | None = None,
) -> None:
    for step in steps:
        await asyncio.sleep(step.get("pauses", {}).get("before", 0) * time_scale)
        if "phase" in step:
            run.phases.append((time.monotonic(), step["phase"]))
        if step["target"] == "runner":
            await _runner_action(system, run, step)
        elif step["target"] in (scenarios or {}):
            await (scenarios or {})[step["target"]].act(step["action"], step.get("args", {}), run.values)
        else:
            await system.act(step["action"], step["target"], step.get("args", {}))
        if "phase_when_done" in step:  # e.g. once a restarted server answers its health check
            run.phases.append((time.monotonic(), step["phase_when_done"]))


async def _runner_action(system: System, run: Run, step: dict[str, Any]) -> None:
    if step["action"] != "stampede":
        raise ValueError(f"unknown runner action {step['action']!r}")
    args = step.get("args", {})
    concurrency = int(args.get("concurrency", 500))
    profile_id = (await _seed(system, {"cached_profiles": 1}))[0][0]
    path = f"/v1/profiles/{profile_id}"
    headers = {"Authorization": f"Bearer {system.token}"}
    async with httpx.AsyncClient(base_url=system.base_url, headers=headers, timeout=30.0) as client:
        await client.get(path)  # cached now
        await asyncio.sleep(float(args.get("expire_after_seconds", 1.5)))  # and expired
        before = await _metric_sum(client, "keel_db_query_duration_seconds_count", 'operation="get_profile"')
        coalesced = await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="coalesced"')
        misses = await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="miss"')
        stale = await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="stale"')
        started, answers = await stampede.burst("127.0.0.1", system.keel_port, path, headers, concurrency)
        run.samples += [Sample("stampede", started, a.seconds, a.status) for a in answers]
        after = await _metric_sum(client, "keel_db_query_duration_seconds_count", 'operation="get_profile"')
        coalesced = (
            await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="coalesced"') - coalesced
        )
        misses = await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="miss"') - misses
        stale = await _metric_sum(client, "keel_profile_cache_lookups_total", 'outcome="stale"') - stale
    errors = [a.error for a in answers if a.status == 0]
    run.values["stampede_transport_errors"] = len(errors)
    if errors:
        print(f"  stampede: {len(errors)} requests got no answer, e.g. {errors[0]}", flush=True)
    run.values["stampede_db_reads"] = after - before
    run.values["stampede_coalesced"] = coalesced
    run.values["stampede_misses"] = misses
    run.values["stampede_stale"] = stale
    run.values["stampede_seconds"] = max(a.seconds for a in answers)
    span = run.values["stampede_seconds"]
    print(
        f"  stampede: answered within {span:.3f} s; cache misses {misses:g}, joined a read in flight"
        f" {coalesced:g}, served stale {stale:g}",
        flush=True,
    )


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


async def _poll_healthz(system: System, polls: list[HealthzPoll], stop: asyncio.Event) -> None:
    """`/healthz` polled on this process's event loop, as the runner did before its poller got
    a process of its own: kept for `compare_pollers`, to show what sharing the loop adds."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=HEALTHZ_TIMEOUT_SECONDS) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            polls.append(HealthzPoll(started, time.monotonic() - started, ok))
            await asyncio.sleep(0.05)


async def _watch_loop_lag(lags: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """This process's own event-loop lag: (when a 5 ms timer woke, how late), until `stop`."""
    while not stop.is_set():
        due = time.monotonic() + RUNNER_PROBE_SECONDS
        await asyncio.sleep(RUNNER_PROBE_SECONDS)
        woke = time.monotonic()
        lags.append((woke, max(0.0, woke - due)))


def compare_healthz_pollers(
    run: Run, in_loop: list[HealthzPoll], runner_lag: list[tuple[float, float]]
) -> str:
    """Both pollers' latency in each phase of the same run (`run.healthz` is the own-process
    poller's), and how much of each in-loop poll was the runner's own loop: the longest lag of
    this loop's 5 ms probe that woke during the poll (or within two probe periods after it,
    when the poll's own wake-up came first)."""

    def quantiles(values: list[float]) -> str:
        if not values:
            return "no polls"
        shown = " / ".join(f"{percentile(values, q) * 1000:.1f}" for q in (50, 99, 100))
        return f"{shown} ms (n={len(values)})"

    def lag_during(poll: HealthzPoll) -> float:
        end = poll.started + poll.seconds + RUNNER_PROBE_SECONDS * 2
        return max((late for woke, late in runner_lag if poll.started <= woke <= end), default=0.0)

    lines = ["/healthz pollers compared, by phase (p50 / p99 / max; failed polls left out):"]
    for phase in dict.fromkeys(["steady", *(name for _, name in run.phases)]):
        own = [p for p in run.healthz if p.ok and run.phase_at(p.started) == phase]
        shared = [p for p in in_loop if p.ok and run.phase_at(p.started) == phase]
        slow_cut = percentile([p.seconds for p in own], 99) if own else math.inf
        slow = [(p.seconds, lag_during(p)) for p in shared if p.seconds > slow_cut]
        mostly_runner = sum(1 for seconds, lag in slow if lag >= (seconds - slow_cut) / 2)
        ratio = percentile([p.seconds for p in shared], 99) / slow_cut if own and shared else math.nan
        lines += [
            f"  {phase}: p99 on the runner's loop / p99 in its own process = {ratio:.2f}",
            f"    own process:   {quantiles([p.seconds for p in own])}",
            f"    runner's loop: {quantiles([p.seconds for p in shared])}",
            f"    runner's loop lag during those polls: {quantiles([lag_during(p) for p in shared])}",
            f"    in-loop polls slower than the own-process p99 ({slow_cut * 1000:.1f} ms): {len(slow)},"
            f" {mostly_runner} of them with runner loop lag >= half their excess",
        ]
    lines.append(f"  runner's loop lag, every 5 ms probe: {quantiles([late for _, late in runner_lag])}")
    return "\n".join(lines)


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
