"""Redis outage: the noisy-neighbour load while Redis is stopped, then started again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from testkit.loadgen import (
    Connection,
    Result,
    run,
)
from testkit.percentile import percentile

from bench.ratelimit.shared import (
    BENCH_QUOTA,
    Environment,
    Report,
    flush_limits,
    good_streams,
    keel_nodes,
    ms,
    ok_results,
    start_abuser,
    start_redis,
    warm,
)


def outage(environment: Environment, duration: float) -> Report:
    report = Report("outage")
    good = environment.keys("bench", 20)
    abuser = environment.keys("bench", 1)[0]
    stop_at, start_at = duration / 3, 2 * duration / 3
    recovered: dict[int, float] = {}
    with keel_nodes(environment, 2, "outage") as ports:
        warm(environment, ports, [*good, abuser])
        flush_limits(environment)

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
                good_streams(environment, ports, good),
                duration,
                events=[
                    (stop_at, environment.redis.stop),
                    (start_at, lambda: start_redis(environment.redis)),
                ],
            )
            await watcher
            return results

        print(
            f"  {duration:g}s of load; Redis stopped at {stop_at:g}s, started at {start_at:g}s ...",
            flush=True,
        )
        collect_abuser = start_abuser(environment, ports, abuser, duration)
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
            "well_behaved_success": len(ok_results(good_window)) / max(1, len(good_window)),
            "well_behaved_p99_ms": ms(percentile([r.latency for r in good_window], 99)),
            "abuser_admitted_per_s": round(len(ok_results(abusive)) / (end - begin), 2),
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
