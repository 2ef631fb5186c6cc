"""Rate-limit and load-shedding scenarios against real Keel processes, PostgreSQL and Redis on
loopback, each bounded in time. Prints the figures and whether each check passed.

    python bench/ratelimit_scenarios.py [noisy noisy-proxy atomic outage spike friendly cost ...]
                                        [--duration 60] [--output bench/results/ratelimit.json]

Scenarios (all by default), one module each in bench/ratelimit/:
  noisy     one client at 50x its quota + 20 well-behaved clients at half of theirs, 2 Keel
            processes sharing Redis; four runs: without the abuser, with it, with it aimed at
            a bare refusal app instead (bench/refusal_floor_app.py), without it again
  noisy-proxy  the noisy load sent through HAProxy, the Keel processes writing the keys they
            refuse to its table (KEEL_PROXY_RUNTIME_API); and again with processes that do not
  atomic    4 Keel processes x 250 concurrent requests against 100/min, burst 10: admitted between
            the burst and the burst + refill; TTL on every key
  outage    the noisy load while Redis is stopped, then started again
  spike     offered load ramps to 3x the measured saturation point of one process
  spike-proxy  the spike through HAProxy fed by the node's agent check, and straight to a node
            in the same run
  friendly  a client that honours RateLimit and Retry-After
  cost      what a decision costs: in-memory and Redis limiter vs no limiter (wrk, same run),
            and per decision in process

Starts a throwaway PostgreSQL and Redis (testkit/servers/), migrates, seeds 10,000 profiles, creates
the keys it needs; stops everything on exit. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

import uvloop  # noqa: E402
from testkit.processes import interrupt_on_signals, keel_cmd  # noqa: E402
from testkit.seed import seed_profiles  # noqa: E402
from testkit.servers.postgres import postgres_server  # noqa: E402
from testkit.servers.redis import RedisServer  # noqa: E402

from bench.ratelimit.atomic import atomic  # noqa: E402
from bench.ratelimit.cost import cost  # noqa: E402
from bench.ratelimit.friendly import friendly  # noqa: E402
from bench.ratelimit.noisy import noisy  # noqa: E402
from bench.ratelimit.noisy_proxy import noisy_proxy  # noqa: E402
from bench.ratelimit.outage import outage  # noqa: E402
from bench.ratelimit.shared import (  # noqa: E402
    PROFILES,
    RESULTS,
    Environment,
    Report,
    split_cpus,
    start_redis,
)
from bench.ratelimit.spike import spike  # noqa: E402
from bench.ratelimit.spike_proxy import spike_proxy  # noqa: E402

SCENARIOS = ("noisy", "noisy-proxy", "atomic", "outage", "spike", "spike-proxy", "friendly", "cost")


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
    split = split_cpus()
    if split is not None:
        os.sched_setaffinity(0, split[0])  # PostgreSQL and Redis, started next, inherit this
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "ratelimit-logs"
    logs.mkdir(exist_ok=True)

    interrupt_on_signals()  # Ctrl-C or SIGTERM: every `with` below stops what it started
    reports: list[Report] = []
    with (
        postgres_server(env_var="KEEL_BENCH_POSTGRES_URL") as database_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        redis = RedisServer(Path(tmp))
        start_redis(redis)
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
                elif name == "noisy-proxy":
                    reports.append(noisy_proxy(environment, args.duration))
                elif name == "atomic":
                    reports.append(atomic(environment))
                elif name == "outage":
                    reports.append(outage(environment, max(30.0, min(args.duration, 45.0))))
                elif name == "spike":
                    reports.append(spike(environment, max(20.0, min(args.duration, 40.0))))
                elif name == "spike-proxy":
                    reports.append(spike_proxy(environment, max(20.0, min(args.duration, 40.0))))
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
