"""Rate-limit and load-shedding scenarios against real Keel processes, PostgreSQL and Redis on
loopback, each bounded in time. Prints the figures and whether each check passed.

    python bench/ratelimit_scenarios.py [noisy atomic outage spike friendly cost ...]
                                        [--duration 60] [--output bench/results/ratelimit.json]

Scenarios (all by default):
  noisy     one client at 50x its quota + 20 well-behaved clients at half of theirs, 2 Keel
            processes sharing Redis; four runs: without the abuser, with it, with it aimed at
            a bare refusal app instead (bench/refusal_floor_app.py), without it again
  atomic    4 Keel processes x 250 concurrent requests against 100/min, burst 10: admitted between
            the burst and the burst + refill; TTL on every key
  outage    the noisy load while Redis is stopped, then started again
  spike     offered load ramps to 3x the measured saturation point of one process
  friendly  a client that honours RateLimit and Retry-After
  cost      what a decision costs: in-memory and Redis limiter vs no limiter (wrk, same run),
            and per decision in process

Starts a throwaway PostgreSQL and Redis (devtools/), migrates, seeds 10,000 profiles, creates
the keys it needs; stops everything on exit. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

import uvloop  # noqa: E402
from bench.harness import ensure_wrk, parse_wrk, serve_cmd  # noqa: E402
from redis import Redis  # noqa: E402
from testkit.loadgen import (  # noqa: E402
    OTHER_LAG,
    OWN_LAG,
    Connection,
    Result,
    Stream,
    auth_headers,
    run,
    run_in_another_process,
)
from testkit.percentile import percentile  # noqa: E402
from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, server  # noqa: E402
from testkit.seed import seed_profiles  # noqa: E402
from testkit.servers.postgres import postgres_server  # noqa: E402
from testkit.servers.redis import RedisServer  # noqa: E402

RESULTS = REPO / "bench" / "results"
PROFILES = 10_000
# With 2+ CPUs the machine is split like a client and a server: the service side (Keel,
# PostgreSQL, Redis) on CPU 0, the load generator (and wrk) on the others, so that the figures
# are not those of a fight for the CPU between Keel and what loads it; on CPU 0, Keel runs at
# nice 10 under PostgreSQL and Redis. Set by `_split_cpus`.
SERVICE_CPUS: set[int] = set()
NODE_PIDS: dict[int, int] = {}  # port -> pid of the Keel process (or of taskset/nice, which exec it)


def _cpu_seconds(ports: Sequence[int]) -> float:
    """User + system CPU time of the Keel processes on these ports, from /proc."""
    total = 0.0
    for port in ports:
        fields = Path(f"/proc/{NODE_PIDS[port]}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


KEEL_CPUS: list[str] = []


def _split_cpus() -> tuple[set[int], set[int]] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    SERVICE_CPUS.clear()
    SERVICE_CPUS.add(cpus[0])
    # Keel at a lower priority than PostgreSQL and Redis on the shared CPU: those would have
    # hosts of their own, where a reply never waits for Keel's turn on the CPU.
    KEEL_CPUS[:] = ["taskset", "-c", str(cpus[0]), "nice", "-n", "10"]
    return {cpus[0]}, set(cpus[1:])


def _start_redis(redis: RedisServer) -> None:
    redis.start()
    if SERVICE_CPUS and redis.process is not None:
        os.sched_setaffinity(redis.process.pid, SERVICE_CPUS)


BENCH_QUOTA = 10  # per second, burst 10: the plan of the noisy-neighbour clients
ATOMIC_QUOTA = 100  # per ATOMIC_WINDOW_S: the `atomic` plan
ATOMIC_WINDOW_S = 60
ATOMIC_BURST = 10
PLANS: dict[str, Any] = {
    "standard": {"policies": [{"name": "burst", "quota": 100, "window_seconds": 1, "burst": 200}]},
    "anonymous": {"policies": [{"name": "burst", "quota": 10, "window_seconds": 1, "burst": 20}]},
    "bench": {
        "policies": [{"name": "burst", "quota": BENCH_QUOTA, "window_seconds": 1, "burst": 10}],
        "concurrency": 20,
    },
    "atomic": {
        "policies": [
            {
                "name": "minute",
                "quota": ATOMIC_QUOTA,
                "window_seconds": ATOMIC_WINDOW_S,
                "burst": ATOMIC_BURST,
            }
        ],
        "concurrency": 1000,  # the cap must not be what stops the 250 concurrent requests
    },
    "friendly": {
        "policies": [
            {"name": "burst", "quota": 10, "window_seconds": 1, "burst": 20},
            {"name": "minute", "quota": 300, "window_seconds": 60, "burst": 60},
        ],
        "concurrency": 5,
    },
    "unlimited": {
        "policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1, "burst": 10_000_000}],
        "concurrency": 100_000,
    },
}


@dataclass
class Check:
    name: str
    passed: bool
    figure: str


@dataclass
class Report:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, passed: bool, figure: str) -> None:
        self.checks.append(Check(name, passed, figure))
        print(f"  [{'PASS' if passed else 'FAIL'}] {name}: {figure}", flush=True)


# --------------------------------------------------------------------------- environment


@dataclass
class Environment:
    database_url: str
    redis: RedisServer
    ids: list[str]
    base_env: dict[str, str]
    logs: Path

    def keel_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a Keel process; an override of "" removes the variable."""
        env = {
            **self.base_env,
            "KEEL_DATABASE_URL": self.database_url,
            "KEEL_REDIS_URL": self.redis.url,
            "KEEL_RATELIMIT_PLANS": json.dumps(PLANS),
            "KEEL_RATELIMIT_NODES": "2",
            **overrides,
        }
        return {name: value for name, value in env.items() if value != ""}

    def keys(self, plan: str, count: int) -> list[str]:
        """`count` API keys on `plan`, created through Keel's service layer."""
        return asyncio.run(_issue_keys(self.keel_env(), plan, count))

    def random_read(self, token: str) -> Callable[[], tuple[str, str, bytes, bytes]]:
        headers = auth_headers(token)
        ids = self.ids
        return lambda: ("GET", f"/v1/profiles/{random.choice(ids)}", headers, b"")


async def _issue_keys(env: dict[str, str], plan: str, count: int) -> list[str]:
    from keel.bootstrap.lifecycle import build_services
    from keel.config import Settings
    from keel.domain.api_keys import Scope
    from keel.service.auth import issue_api_key

    settings = Settings(
        database_url=env["KEEL_DATABASE_URL"], ratelimit_plans=PLANS, redis_url=env["KEEL_REDIS_URL"]
    )
    keel = await build_services(settings)
    try:
        tokens = []
        for n in range(count):
            issued = await issue_api_key(
                keel.local.store,
                keel.local.clock,
                scopes=[Scope.PROFILES_READ],
                api_version="2026-11-28",
                name=f"{plan}-{n}",
                plan=plan,
            )
            tokens.append(issued.token)
        return tokens
    finally:
        await keel.close()


@contextlib.contextmanager
def keel_nodes(environment: Environment, count: int, name: str, **overrides: str) -> Iterator[list[int]]:
    """`count` Keel processes (one uvicorn worker each) on free loopback ports."""
    with _service_processes(environment, count, "keel", name, environment.keel_env(**overrides)) as ports:
        yield ports


@contextlib.contextmanager
def refusal_floor(environment: Environment, count: int) -> Iterator[list[int]]:
    """`count` processes of bench/refusal_floor_app.py, placed like Keel's."""
    with _service_processes(
        environment, count, "refusal_floor", "refusal-floor", environment.keel_env()
    ) as ports:
        yield ports


@contextlib.contextmanager
def _service_processes(
    environment: Environment, count: int, app: str, name: str, env: dict[str, str]
) -> Iterator[list[int]]:
    """`count` processes of `app` (see harness.serve_cmd) on the service side's CPU, on free
    loopback ports; their pids in NODE_PIDS for CPU accounting."""
    ports = [free_port() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for n, port in enumerate(ports):
            command = [*KEEL_CPUS, *serve_cmd(app, port)]
            log = environment.logs / f"{name}-{n}.log"
            process = stack.enter_context(server(f"{app} {name} {n}", command, env, log, port))
            NODE_PIDS[port] = process.pid
        yield ports


def _flush_limits(environment: Environment) -> None:
    client = Redis.from_url(environment.redis.url)
    try:
        for key in client.scan_iter(match="keel:rl:*"):
            client.delete(key)
    finally:
        client.close()


def _ok(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if 200 <= r.status < 300]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --------------------------------------------------------------------------- 1. noisy neighbour


def _good_streams(environment: Environment, ports: list[int], good: list[str]) -> list[Stream]:
    return [
        Stream(f"good-{n}", "read", ports, lambda t: BENCH_QUOTA / 2, environment.random_read(token))
        for n, token in enumerate(good)
    ]


def _start_abuser(
    environment: Environment, ports: Sequence[int], abuser: str, duration: float
) -> Callable[[], list[Result]]:
    """The abuser, at 50x its quota, from a load generator process of its own (another client
    machine): from the well-behaved clients' event loop, its 500 requests a second of client-side
    work would show in their latencies. Niced, so that on a shared CPU it does not delay theirs."""
    stream = Stream("abuser", "read", ports, lambda t: BENCH_QUOTA * 50, environment.random_read(abuser))
    return run_in_another_process([stream], duration, nice=10)


def noisy(environment: Environment, duration: float) -> Report:
    """Four runs of `duration` on the same two Keel processes: the well-behaved clients alone;
    with the abuser; with the abuser aimed instead at the refusal floor (a bare uvicorn app that
    answers every request with a prebuilt 429, placed like Keel) to measure what merely receiving
    that traffic costs here; and alone again. The reference p99 is that of both runs alone
    together, and their difference is the noise of the measurement itself."""
    report = Report("noisy")
    good = environment.keys("bench", 20)
    abuser = environment.keys("bench", 1)[0]
    with keel_nodes(environment, 2, "noisy") as ports, refusal_floor(environment, 2) as floor_ports:
        _warm(environment, ports, good)

        def measured(label: str, abuser_ports: list[int] | None) -> tuple[list[Result], float, float]:
            _flush_limits(environment)
            print(f"  {label}, {duration:g}s ...", flush=True)
            watched = [*ports, *floor_ports]
            cpu_before = _cpu_seconds(watched)
            collect = _start_abuser(environment, abuser_ports, abuser, duration) if abuser_ports else None
            results = asyncio.run(run(_good_streams(environment, ports, good), duration))
            lag = percentile(OWN_LAG, 99)
            if collect is not None:
                results += collect()
            return results, _cpu_seconds(watched) - cpu_before, lag

        quiet, cpu_quiet, lag_quiet = measured("without the abuser", None)
        loud, cpu_loud, lag_loud = measured("with the abuser at 50x its quota", ports)
        floored, cpu_floored, lag_floored = measured(
            "with the abuser aimed at the refusal floor app instead", floor_ports
        )
        again, cpu_again, _ = measured("without the abuser, again", None)

    def good_latencies(results: list[Result]) -> list[float]:
        return [r.latency for r in results if r.client.startswith("good")]

    loud_good = [r for r in loud if r.client.startswith("good")]
    abusive = [r for r in loud if r.client == "abuser"]
    refused = max(1, sum(r.status == 429 for r in abusive))
    floor_refused = max(1, sum(r.status == 429 for r in floored if r.client == "abuser"))
    success = len(_ok(loud_good)) / len(loud_good)
    p99_first, p99_again = percentile(good_latencies(quiet), 99), percentile(good_latencies(again), 99)
    p99_quiet = percentile(good_latencies(quiet) + good_latencies(again), 99)
    p99_loud = percentile(good_latencies(loud), 99)
    p99_floor = percentile(good_latencies(floored), 99)
    cpu_alone = (cpu_quiet + cpu_again) / 2
    admitted = len(_ok(abusive))
    expected = BENCH_QUOTA * duration + 10
    report.figures = {
        "well_behaved_requests": len(loud_good),
        "well_behaved_success": success,
        "well_behaved_p99_ms_without_abuser": _ms(p99_quiet),
        "well_behaved_p99_ms_without_abuser_first_run": _ms(p99_first),
        "well_behaved_p99_ms_without_abuser_second_run": _ms(p99_again),
        "well_behaved_p99_ms_with_abuser": _ms(p99_loud),
        "well_behaved_p99_ms_with_abuser_at_refusal_floor": _ms(p99_floor),
        "well_behaved_p50_ms_with_abuser": _ms(percentile(good_latencies(loud), 50)),
        "abuser_offered": len(abusive),
        "abuser_admitted": admitted,
        "abuser_expected_quota_plus_burst": expected,
        "abuser_rejected_429": sum(r.status == 429 for r in abusive),
        # Refusals Keel answered before the framework (EarlyRefusals) carry no traceparent.
        "abuser_refused_early": sum(r.status == 429 and "traceparent" not in r.headers for r in abusive),
        "cpu_seconds_without_abuser": round(cpu_alone, 2),
        "cpu_seconds_with_abuser": round(cpu_loud, 2),
        "cpu_seconds_with_abuser_at_refusal_floor": round(cpu_floored, 2),
        "keel_cpu_us_per_refused_request": round((cpu_loud - cpu_alone) * 1e6 / refused, 1),
        "refusal_floor_cpu_us_per_refused_request": round((cpu_floored - cpu_alone) * 1e6 / floor_refused, 1),
        "abuser_other_statuses": sorted({r.status for r in abusive} - {200, 429}),
        "generator_lag_p99_ms_without_abuser": _ms(lag_quiet),
        "generator_lag_p99_ms_with_abuser": _ms(lag_loud),
        "generator_lag_p99_ms_with_abuser_at_refusal_floor": _ms(lag_floored),
        "abuser_generator_lag_p99_ms": _ms(percentile(OTHER_LAG, 99)),
        "transport_errors": sorted({r.headers.get("error", "") for r in loud if r.status == 0}),
    }
    report.check("well-behaved success >= 99.9%", success >= 0.999, f"{success:.4%} of {len(loud_good)}")
    report.check(
        "well-behaved p99 within +10% of the run without the abuser",
        p99_loud <= p99_quiet * 1.10,
        f"{_ms(p99_loud)} ms vs {_ms(p99_quiet)} ms ({p99_loud / p99_quiet - 1:+.1%}); the two runs"
        f" without it: {_ms(p99_first)} and {_ms(p99_again)} ms; with the abuser at the refusal"
        f" floor app instead: {_ms(p99_floor)} ms ({p99_floor / p99_quiet - 1:+.1%})",
    )
    report.check(
        "abuser admitted within 5% of quota + burst",
        abs(admitted - expected) <= 0.05 * expected,
        f"{admitted} admitted of {len(abusive)} offered; quota x {duration:g}s + burst = {expected:g}",
    )
    return report


def _warm(environment: Environment, ports: list[int], tokens: list[str]) -> None:
    """One request per key and node: key caches, connection pools and code paths warmed."""

    async def warm() -> None:
        for port in ports:
            connection = await Connection.open(port)
            for token in tokens:
                await connection.request("GET", f"/v1/profiles/{environment.ids[0]}", auth_headers(token))
            connection.close()

    asyncio.run(warm())


# --------------------------------------------------------------------------- 2. atomicity


@dataclass(frozen=True)
class AtomicOutcome:
    """What the atomicity burst produced: every status, how long the burst lasted, and the TTL
    (ms, as Redis's PTTL answers) of every limiter key left behind."""

    statuses: list[int]
    elapsed_s: float
    ttls_ms: list[int]

    @property
    def admitted(self) -> int:
        return self.statuses.count(200)

    def admissible(self) -> tuple[int, int]:
        """The admitted count a correct shared limiter can produce. The key starts full (flushed
        just before), so the burst is admitted whatever the timing: that is the floor. On top
        of it, at most what refilled while the burst lasted (one unit per 60/100 s, plus one
        for a refill landing exactly at the start). A limiter that refused everything (0), or
        admitted per process or without a lock (up to 4 x burst, or all 1,000), falls outside."""
        refill = int(self.elapsed_s * ATOMIC_QUOTA / ATOMIC_WINDOW_S) + 1
        return ATOMIC_BURST, ATOMIC_BURST + refill


def atomic_checks(outcome: AtomicOutcome) -> list[Check]:
    """The atomicity scenario's verdicts, apart from running it so that a unit test can feed
    them outcomes a broken limiter would produce (tests/unit/test_bench_checks.py)."""
    low, high = outcome.admissible()
    admitted, total = outcome.admitted, len(outcome.statuses)
    statuses = sorted(set(outcome.statuses))
    return [
        Check(
            "admitted <= limit + burst",
            admitted <= ATOMIC_QUOTA + ATOMIC_BURST,
            f"{admitted} of {total} admitted (limit {ATOMIC_QUOTA}/min + burst {ATOMIC_BURST})",
        ),
        Check(
            "admitted within [burst, burst + what refilled during the burst]",
            low <= admitted <= high,
            f"{admitted} admitted in {outcome.elapsed_s:.2f}s, expected {low}..{high}",
        ),
        Check(
            "every limiter key has a TTL",
            bool(outcome.ttls_ms) and all(ttl > 0 for ttl in outcome.ttls_ms),
            f"{len(outcome.ttls_ms)} keys, TTLs {sorted(outcome.ttls_ms)}",
        ),
        Check("no errors", set(statuses) <= {200, 429}, f"statuses {statuses}"),
    ]


def atomic(environment: Environment) -> Report:
    report = Report("atomic")
    token = environment.keys("atomic", 1)[0]
    per_process = 250
    with keel_nodes(environment, 4, "atomic", KEEL_LOAD_SHEDDING_ENABLED="false") as ports:
        _flush_limits(environment)
        headers = auth_headers(token)

        async def burst() -> tuple[list[int], float]:
            connections = [(await Connection.open(port)) for port in ports for _ in range(per_process)]
            start = asyncio.Event()

            async def one(connection: Connection) -> int:
                await start.wait()
                response = await connection.request(
                    "GET", f"/v1/profiles/{random.choice(environment.ids)}", headers
                )
                connection.close()
                return response.status

            tasks = [asyncio.create_task(one(c)) for c in connections]
            await asyncio.sleep(0.2)
            began = time.perf_counter()
            start.set()
            statuses = await asyncio.gather(*tasks)
            return statuses, time.perf_counter() - began

        statuses, elapsed = asyncio.run(burst())
    client = Redis.from_url(environment.redis.url)
    try:
        keys = list(client.scan_iter(match="keel:rl:*"))
        ttls = [client.pttl(key) for key in keys]
    finally:
        client.close()
    outcome = AtomicOutcome(statuses=statuses, elapsed_s=elapsed, ttls_ms=ttls)
    low, high = outcome.admissible()
    report.figures = {
        "processes": 4,
        "requests": len(statuses),
        "admitted": outcome.admitted,
        "rejected_429": statuses.count(429),
        "other_statuses": sorted(set(statuses) - {200, 429}),
        "elapsed_s": round(elapsed, 3),
        "allowed_at_least": low,
        "allowed_at_most": high,
        "limiter_keys": len(keys),
        "keys_without_ttl": sum(ttl < 0 for ttl in ttls),
    }
    for check in atomic_checks(outcome):
        report.check(check.name, check.passed, check.figure)
    return report


# --------------------------------------------------------------------------- 3. Redis outage


def outage(environment: Environment, duration: float) -> Report:
    report = Report("outage")
    good = environment.keys("bench", 20)
    abuser = environment.keys("bench", 1)[0]
    stop_at, start_at = duration / 3, 2 * duration / 3
    recovered: dict[int, float] = {}
    with keel_nodes(environment, 2, "outage") as ports:
        _warm(environment, ports, [*good, abuser])
        _flush_limits(environment)

        async def watch_recovery() -> None:
            # From Redis's return: when does each node decide on Redis again (breaker closed)?
            await asyncio.sleep(start_at)
            began = time.perf_counter()
            while len(recovered) < len(ports) and time.perf_counter() - began < duration - start_at:
                for port in ports:
                    if port in recovered:
                        continue
                    with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
                        connection = await Connection.open(port)
                        response = await connection.request("GET", "/readyz", b"")
                        connection.close()
                        if json.loads(response.body).get("breakers", {}).get("redis") == "closed":
                            recovered[port] = time.perf_counter() - began
                await asyncio.sleep(0.1)

        async def scenario() -> list[Result]:
            watcher = asyncio.create_task(watch_recovery())
            results = await run(
                _good_streams(environment, ports, good),
                duration,
                events=[
                    (stop_at, environment.redis.stop),
                    (start_at, lambda: _start_redis(environment.redis)),
                ],
            )
            await watcher
            return results

        print(
            f"  {duration:g}s of load; Redis stopped at {stop_at:g}s, started at {start_at:g}s ...",
            flush=True,
        )
        collect_abuser = _start_abuser(environment, ports, abuser, duration)
        results = asyncio.run(scenario())
        results += collect_abuser()
    warmup = 2.0
    phases = {
        "before": (warmup, stop_at),
        "outage": (stop_at, start_at),
        "after": (start_at + 5, duration),
    }
    figures: dict[str, Any] = {}
    for phase, (begin, end) in phases.items():
        window = [r for r in results if begin <= r.scheduled < end]
        good_window = [r for r in window if r.client.startswith("good")]
        abusive = [r for r in window if r.client == "abuser"]
        figures[phase] = {
            "seconds": end - begin,
            "requests": len(window),
            "server_errors_5xx": sum(r.status >= 500 for r in window),
            "transport_errors": sum(r.status == 0 for r in window),
            "well_behaved_success": len(_ok(good_window)) / max(1, len(good_window)),
            "well_behaved_p99_ms": _ms(percentile([r.latency for r in good_window], 99)),
            "abuser_admitted_per_s": round(len(_ok(abusive)) / (end - begin), 2),
            "transport_error_kinds": sorted({r.headers.get("error", "") for r in window if r.status == 0}),
        }
    figures["recovery_s_after_redis_returned"] = {str(p): round(s, 2) for p, s in recovered.items()}
    report.figures = figures
    before, during = figures["before"], figures["outage"]
    report.check(
        "5xx rate unchanged",
        during["server_errors_5xx"] == before["server_errors_5xx"] == 0 and during["transport_errors"] == 0,
        f"5xx before {before['server_errors_5xx']}, during {during['server_errors_5xx']};"
        f" transport errors during {during['transport_errors']}",
    )
    added = during["well_behaved_p99_ms"] - before["well_behaved_p99_ms"]
    report.check(
        "added p99 <= 5 ms",
        added <= 5.0,
        f"well-behaved p99 {before['well_behaved_p99_ms']} ms before, {during['well_behaved_p99_ms']} ms"
        f" during ({added:+.2f} ms)",
    )
    report.check(
        "the abuser stays capped",
        during["abuser_admitted_per_s"] <= BENCH_QUOTA * 1.10 + 10 / (start_at - stop_at),
        f"{during['abuser_admitted_per_s']}/s admitted during the outage (quota {BENCH_QUOTA}/s,"
        f" each of 2 nodes allowing half)",
    )
    report.check(
        "back on Redis within 10 s of its return",
        len(recovered) == 2 and max(recovered.values()) <= 10,
        f"breakers closed after {sorted(round(s, 2) for s in recovered.values())} s",
    )
    return report


# --------------------------------------------------------------------------- 4. spike


LIST_LIMIT = 50
CRITICAL_RATE = 40.0
# Closed-loop list workers for the saturation point; the best goodput of these is the peak.
SATURATION_WORKERS = (2, 4, 8, 16)


def _list_request(token: str) -> Callable[[], tuple[str, str, bytes, bytes]]:
    headers = auth_headers(token)
    return lambda: ("GET", f"/v1/profiles?limit={LIST_LIMIT}", headers, b"")


async def _closed_loop(port: int, token: str, workers: int, seconds: float) -> tuple[int, int]:
    """Lists, each worker sending its next as soon as the previous returns: (ok, total)."""
    ok = total = 0
    deadline = time.perf_counter() + seconds
    request = _list_request(token)

    async def worker() -> None:
        nonlocal ok, total
        connection = await Connection.open(port)
        while time.perf_counter() < deadline:
            method, path, headers, body = request()
            response = await connection.request(method, path, headers, body)
            total += 1
            ok += 200 <= response.status < 300
        connection.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return ok, total


def spike(environment: Environment, duration: float) -> Report:
    report = Report("spike")
    token = environment.keys("unlimited", 1)[0]
    with keel_nodes(environment, 1, "spike", KEEL_RATELIMIT_ENABLED="false") as ports:
        port = ports[0]
        _warm(environment, ports, [token])

        async def measure_saturation(workers: int) -> float:
            """Goodput (2xx/s) with `workers` lists always outstanding, plus the critical reads."""
            critical = Stream(
                "critical", "read", ports, lambda t: CRITICAL_RATE, environment.random_read(token)
            )
            reads, (ok, _) = await asyncio.gather(
                run([critical], 10.0), _closed_loop(port, token, workers, 10.0)
            )
            return ok / 10.0 + len(_ok(reads)) / 10.0

        asyncio.run(_closed_loop(port, token, 8, 3.0))  # warm-up
        peak = 0.0
        for workers in SATURATION_WORKERS:
            print(f"  saturation: {workers} closed-loop list workers + critical reads, 10 s ...", flush=True)
            peak = max(peak, asyncio.run(measure_saturation(workers)))
        list_peak = peak - CRITICAL_RATE
        print(f"  peak goodput {peak:.0f}/s ({list_peak:.0f} lists/s); unloaded run at 30% ...", flush=True)
        unloaded_streams = [
            Stream("lists", "list", ports, lambda t: 0.3 * list_peak, _list_request(token)),
            Stream("critical", "read", ports, lambda t: CRITICAL_RATE, environment.random_read(token)),
        ]
        unloaded = asyncio.run(run(unloaded_streams, 10.0))
        ramp = duration / 2

        def offered(t: float) -> float:
            return list_peak * (0.5 + 2.5 * min(1.0, t / ramp))

        spike_streams = [
            Stream("lists", "list", ports, offered, _list_request(token)),
            Stream("critical", "read", ports, lambda t: CRITICAL_RATE, environment.random_read(token)),
        ]
        print(f"  ramp to 3x the list saturation over {ramp:g}s, hold {duration - ramp:g}s ...", flush=True)
        spiked = asyncio.run(run(spike_streams, duration))
        generator_lag_p99 = percentile(OWN_LAG, 99)
        within, shed_total = asyncio.run(_server_side_shed_time(port))
    hold = [r for r in spiked if r.scheduled >= ramp + 2]
    hold_seconds = duration - ramp - 2
    goodput = len(_ok(hold)) / hold_seconds
    unloaded_p99 = percentile([r.latency for r in _ok(unloaded) if r.kind == "list"], 99)
    admitted_p99 = percentile([r.latency for r in _ok(hold) if r.kind == "list"], 99)
    critical = [r for r in spiked if r.kind == "read"]
    critical_success = len(_ok(critical)) / len(critical)
    rejected = [r for r in hold if r.status == 503]
    rejection_p99 = percentile([r.latency for r in rejected], 99)
    report.figures = {
        "peak_goodput_per_s": round(peak, 1),
        "list_saturation_per_s": round(list_peak, 1),
        "offered_at_hold_per_s": round(3 * list_peak + CRITICAL_RATE, 1),
        "goodput_at_hold_per_s": round(goodput, 1),
        "unloaded_list_p99_ms": _ms(unloaded_p99),
        "admitted_list_p99_ms_at_hold": _ms(admitted_p99),
        "critical_requests": len(critical),
        "critical_success": critical_success,
        "shed_503_at_hold": len(rejected),
        "rejection_p99_ms": _ms(rejection_p99),
        "statuses_at_hold": {
            str(s): sum(r.status == s for r in hold) for s in sorted({r.status for r in hold})
        },
    }
    report.check(
        "goodput >= 90% of peak",
        goodput >= 0.9 * peak,
        f"{goodput:.0f}/s vs peak {peak:.0f}/s ({goodput / peak:.0%})",
    )
    report.check(
        "admitted p99 <= 2x unloaded p99",
        admitted_p99 <= 2 * unloaded_p99,
        f"{_ms(admitted_p99)} ms vs unloaded {_ms(unloaded_p99)} ms",
    )
    report.check(
        "critical traffic >= 99% success",
        critical_success >= 0.99,
        f"{critical_success:.2%} of {len(critical)}",
    )
    report.check(
        "rejections answered in <= 5 ms (p99, as the client sees it)",
        bool(rejected) and rejection_p99 <= 0.005,
        f"p99 {_ms(rejection_p99)} ms over {len(rejected)} rejections (the load generator's own timer"
        f" lag p99: {_ms(generator_lag_p99)} ms)",
    )
    report.check(
        "rejections answered in <= 5 ms (99%, inside Keel: from the request to the response)",
        shed_total > 0 and within / shed_total >= 0.99,
        f"{within / max(shed_total, 1):.2%} of {shed_total:.0f} within 5 ms"
        " (Keel's keel_http_request_duration_seconds)",
    )
    return report


async def _server_side_shed_time(port: int) -> tuple[float, float]:
    """From Keel's own histogram: shed responses answered within 5 ms, and all of them."""
    connection = await Connection.open(port)
    response = await connection.request("GET", "/metrics", b"")
    connection.close()
    within = total = 0.0
    for line in response.body.decode().splitlines():
        if not line.startswith("keel_http_request_duration_seconds_bucket") or 'status="503"' not in line:
            continue
        if 'le="0.005"' in line:
            within += float(line.rsplit(" ", 1)[1])
        elif 'le="+Inf"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return within, total


# --------------------------------------------------------------------------- 5. friendly client


def _parse_list(value: str) -> list[tuple[str, dict[str, float]]]:
    import http_sf

    parsed: list[tuple[str, dict[str, float]]] = http_sf.parse(value.encode(), tltype="list")  # type: ignore[assignment]
    return parsed


def friendly(environment: Environment, duration: float) -> Report:
    """Reads (cost 1) and lists (cost 10) alternating 9:1, as fast as the headers allow."""
    report = Report("friendly")
    token = environment.keys("friendly", 1)[0]
    costs = {"read": 1, "list": 10}
    with keel_nodes(environment, 2, "friendly") as ports:
        _flush_limits(environment)

        async def client() -> dict[str, Any]:
            connections = [await Connection.open(port) for port in ports]
            headers = auth_headers(token)
            statuses: list[int] = []
            units = 0
            wait_total = 0.0
            n = 0
            deadline = time.perf_counter() + duration
            while time.perf_counter() < deadline:
                kind = "list" if n % 10 == 9 else "read"
                path = (
                    f"/v1/profiles?limit={LIST_LIMIT}"
                    if kind == "list"
                    else f"/v1/profiles/{random.choice(environment.ids)}"
                )
                response = await connections[n % len(connections)].request("GET", path, headers)
                n += 1
                statuses.append(response.status)
                wait = 0.0
                if response.status == 429:
                    wait = float(response.headers.get("retry-after", "1"))
                else:
                    units += costs[kind]
                    policies = {
                        name: params for name, params in _parse_list(response.headers["ratelimit-policy"])
                    }
                    [(name, state)] = _parse_list(response.headers["ratelimit"])
                    next_cost = costs["list" if n % 10 == 9 else "read"]
                    if state["r"] < next_cost:
                        # Units come back at q/w per second; wait for the missing ones.
                        interval = policies[name]["w"] / policies[name]["q"]
                        wait = (next_cost - state["r"]) * interval
                if wait:
                    wait_total += wait
                    await asyncio.sleep(wait)
            for connection in connections:
                connection.close()
            return {"requests": len(statuses), "statuses": statuses, "units": units, "waited_s": wait_total}

        outcome = asyncio.run(client())
    statuses = outcome["statuses"]
    sustained = 300 / 60
    units_per_s = outcome["units"] / duration
    # Over the run, GCRA admits at most quota x duration + burst (the minute policy binds).
    ceiling = (sustained * duration + 60) / duration
    report.figures = {
        "requests": outcome["requests"],
        "rejected_429": statuses.count(429),
        "other_statuses": sorted(set(statuses) - {200, 429}),
        "units_per_s": round(units_per_s, 2),
        "ceiling_units_per_s": round(ceiling, 2),
        "seconds_spent_waiting": round(outcome["waited_s"], 1),
    }
    report.check("zero 429s", statuses.count(429) == 0, f"{statuses.count(429)} of {len(statuses)}")
    report.check(
        "and still uses its quota (>= 90% of what the policies allow)",
        units_per_s >= 0.9 * ceiling,
        f"{units_per_s:.2f} units/s of {ceiling:.2f}",
    )
    return report


# --------------------------------------------------------------------------- limiter cost


def cost(environment: Environment, duration: float) -> Report:
    report = Report("cost")
    token = environment.keys("unlimited", 1)[0]
    wrk = ensure_wrk()
    ids_file = RESULTS / "ratelimit_ids.txt"
    ids_file.write_text("\n".join(environment.ids) + "\n")
    wrk_env = {**environment.base_env, "KEEL_BENCH_IDS": str(ids_file), "KEEL_BENCH_TOKEN": token}
    variants = {
        "no limiter": {"KEEL_RATELIMIT_ENABLED": "false"},
        "in-memory": {"KEEL_REDIS_URL": ""},
        "redis": {},
    }
    runs: dict[str, list[Any]] = {name: [] for name in variants}
    for round_number in range(2):
        order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
        for name in order:
            overrides = {"KEEL_LOAD_SHEDDING_ENABLED": "false", **variants[name]}
            with keel_nodes(environment, 1, f"cost-{name.replace(' ', '-')}", **overrides) as ports:
                command = [
                    wrk,
                    "-t1",
                    "-c32",
                    f"-d{duration:g}s",
                    "--latency",
                    "-s",
                    str(REPO / "bench" / "rest_read.lua"),
                ]
                subprocess.run(
                    [*command[:3], "-d3s", *command[4:], f"http://127.0.0.1:{ports[0]}"],
                    env=wrk_env,
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
                done = subprocess.run(
                    [*command, f"http://127.0.0.1:{ports[0]}"],
                    env=wrk_env,
                    capture_output=True,
                    text=True,
                    timeout=duration + 60,
                    check=True,
                )
            result = parse_wrk(name, done.stdout)
            runs[name].append(result)
            print(
                f"  round {round_number + 1} {name:<10} {result.requests_per_second:8,.0f} req/s"
                f"  p50 {result.p50_ms:5.2f} ms  p99 {result.p99_ms:6.2f} ms  non-2xx {result.non_2xx_3xx}",
                flush=True,
            )
    medians = {
        name: {
            "requests_per_second": statistics.median(r.requests_per_second for r in rs),
            "p50_ms": statistics.median(r.p50_ms for r in rs),
            "p99_ms": statistics.median(r.p99_ms for r in rs),
            "non_2xx": sum(r.non_2xx_3xx for r in rs),
        }
        for name, rs in runs.items()
    }
    micro = asyncio.run(_decision_cost(environment))
    refusals = _refusal_throughput(environment, wrk)
    base = medians["no limiter"]["requests_per_second"]
    report.figures = {
        "wrk_medians": medians,
        "throughput_ratio_in_memory": round(medians["in-memory"]["requests_per_second"] / base, 3),
        "throughput_ratio_redis": round(medians["redis"]["requests_per_second"] / base, 3),
        "per_request_cpu_us_no_limiter": round(1e6 / base, 1),
        **micro,
        **refusals,
    }
    for name in ("in-memory", "redis"):
        m = medians[name]
        report.check(
            f"{name} limiter: every response a 200",
            m["non_2xx"] == 0,
            f"{m['requests_per_second']:,.0f} req/s = {m['requests_per_second'] / base:.1%} of no limiter;"
            f" p50 {m['p50_ms'] - medians['no limiter']['p50_ms']:+.2f} ms",
        )
    return report


def _refusal_throughput(environment: Environment, wrk: str) -> dict[str, float]:
    """How fast one process answers nothing but refusals (wrk, 8 connections, a key far over its
    quota): Keel (Redis limiter, remembered refusals answered before the framework) and the
    refusal floor app (a prebuilt 429), alternated over 2 rounds; medians."""
    token = environment.keys("bench", 1)[0]
    url_path = f"/v1/profiles/{environment.ids[0]}"
    rates: dict[str, list[float]] = {"keel": [], "floor": []}
    for round_number in range(2):
        for name in ("keel", "floor") if round_number == 0 else ("floor", "keel"):
            nodes = (
                keel_nodes(environment, 1, "refusals") if name == "keel" else refusal_floor(environment, 1)
            )
            with nodes as ports:
                command = [wrk, "-t1", "-c8", "-d5s", "--latency", "-H", f"Authorization: Bearer {token}"]
                url = f"http://127.0.0.1:{ports[0]}{url_path}"
                subprocess.run(
                    [*command[:3], "-d2s", *command[4:], url], capture_output=True, timeout=60, check=True
                )
                done = subprocess.run([*command, url], capture_output=True, text=True, timeout=60, check=True)
            result = parse_wrk(name, done.stdout)
            rates[name].append(result.requests_per_second)
            print(
                f"  round {round_number + 1} refusals only, {name:<5} {result.requests_per_second:8,.0f}/s",
                flush=True,
            )
    keel, floor = statistics.median(rates["keel"]), statistics.median(rates["floor"])
    print(
        f"  refusals/s: Keel {keel:,.0f}, refusal floor app {floor:,.0f} (ratio {keel / floor:.2f})",
        flush=True,
    )
    return {
        "refusals_per_s_keel": round(keel, 1),
        "refusals_per_s_floor_app": round(floor, 1),
        "refusal_throughput_ratio_keel_to_floor": round(keel / floor, 3),
    }


async def _decision_cost(environment: Environment) -> dict[str, float]:
    """Sequential decisions in this process: the limiter alone, without HTTP around it."""
    from keel.observability.metrics import Metrics
    from keel.ratelimit.guard import RateLimitGuard
    from keel.ratelimit.memory import InMemoryRateLimiter
    from keel.ratelimit.policy import Plan, Policy
    from keel.ratelimit.ports import RateLimiter
    from keel.ratelimit.redis import RedisRateLimiter, connect

    plan = Plan("p", (Policy("burst", 1_000_000, 1, 1_000_000), Policy("hourly", 10**9, 3600, 10**9)), 10**6)
    figures: dict[str, float] = {}
    limiters: dict[str, RateLimiter] = {
        "in_memory": InMemoryRateLimiter(),
        "redis": RedisRateLimiter(connect(environment.redis.url), timeout_seconds=0.5),
    }
    for name, limiter in limiters.items():
        guard = RateLimitGuard(limiter, Metrics())
        count = 20_000 if name == "in_memory" else 5_000
        for n in range(200):
            await guard.admit(f"warm-{n}", plan, 1)
            guard.release(f"warm-{n}")
        began = time.perf_counter()
        for n in range(count):
            client = f"c{n % 1000}"
            await guard.admit(client, plan, 1)
            guard.release(client)
        figures[f"decision_us_{name}"] = round((time.perf_counter() - began) / count * 1e6, 1)
        await guard.close()
    print(
        f"  per decision, in process: in-memory {figures['decision_us_in_memory']} µs,"
        f" Redis {figures['decision_us_redis']} µs (a loopback round trip + the script)",
        flush=True,
    )
    return figures


# --------------------------------------------------------------------------- main

SCENARIOS = ("noisy", "atomic", "outage", "spike", "friendly", "cost")


def _prepare(database_url: str, redis: RedisServer, logs: Path) -> Environment:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env = {**base_env, "KEEL_DATABASE_URL": database_url}
    migrated = subprocess.run(
        keel_cmd("migrate"), env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"keel migrate failed:\n{migrated.stdout}\n{migrated.stderr}")
    _, ids = asyncio.run(seed_profiles(database_url, PROFILES, "eu1"))
    return Environment(database_url, redis, ids, base_env, logs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)}; default: all")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per load run (noisy: 60)")
    parser.add_argument("--output", type=Path, default=RESULTS / "ratelimit.json")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = args.scenarios or list(SCENARIOS)
    uvloop.install()
    split = _split_cpus()
    if split is not None:
        os.sched_setaffinity(0, split[0])  # PostgreSQL and Redis, started next, inherit this
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "ratelimit-logs"
    logs.mkdir(exist_ok=True)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    reports: list[Report] = []
    with (
        postgres_server(env_var="KEEL_BENCH_POSTGRES_URL") as database_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        redis = RedisServer(Path(tmp))
        _start_redis(redis)
        if split is not None:
            os.sched_setaffinity(0, split[1])
            print(
                f"service side (Keel, PostgreSQL, Redis) on CPU(s) {sorted(split[0])}; load generator on"
                f" {sorted(split[1])}",
                flush=True,
            )
        else:
            print("not pinned: fewer than 2 CPUs or no taskset", flush=True)
        try:
            environment = _prepare(database_url, redis, logs)
            for name in args.scenarios:
                print(f"\n== {name}", flush=True)
                if name == "noisy":
                    reports.append(noisy(environment, args.duration))
                elif name == "atomic":
                    reports.append(atomic(environment))
                elif name == "outage":
                    reports.append(outage(environment, max(30.0, min(args.duration, 45.0))))
                elif name == "spike":
                    reports.append(spike(environment, max(20.0, min(args.duration, 40.0))))
                elif name == "friendly":
                    reports.append(friendly(environment, max(20.0, min(args.duration, 40.0))))
                elif name == "cost":
                    reports.append(cost(environment, max(10.0, min(args.duration, 15.0))))
        finally:
            redis.stop()
    failed = [f"{r.scenario}: {c.name}" for r in reports for c in r.checks if not c.passed]
    print("\n== summary")
    for report in reports:
        for check in report.checks:
            print(
                f"  {report.scenario:<9} [{'PASS' if check.passed else 'FAIL'}] {check.name}: {check.figure}"
            )
    args.output.write_text(
        json.dumps(
            [
                {"scenario": r.scenario, "figures": r.figures, "checks": [c.__dict__ for c in r.checks]}
                for r in reports
            ],
            indent=2,
            default=str,
        )
    )
    print(f"\nresults: {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
