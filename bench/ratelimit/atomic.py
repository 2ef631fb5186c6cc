"""Atomicity: 4 Keel processes x 250 concurrent requests against 100/min, burst 10; admitted
between the burst and the burst + refill; a TTL on every key."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from redis import Redis
from testkit.loadgen import (
    Connection,
    auth_headers,
)

from bench.ratelimit.shared import (
    ATOMIC_BURST,
    ATOMIC_QUOTA,
    ATOMIC_WINDOW_S,
    Check,
    Environment,
    Report,
    flush_limits,
    keel_nodes,
)


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
        flush_limits(environment)
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
