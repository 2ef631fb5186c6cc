"""Spike: offered load ramps to 3x the measured saturation point of one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from testkit.loadgen import (
    OWN_LAG,
    Connection,
    Stream,
    auth_headers,
    run,
)
from testkit.percentile import percentile

from bench.ratelimit.shared import (
    LIST_LIMIT,
    Environment,
    Report,
    keel_nodes,
    ms,
    ok_results,
    warm,
)

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
        warm(environment, ports, [token])
        measure_spike(environment, token, ports[0], ports[0], duration, report)
    return report


def measure_spike(
    environment: Environment, token: str, front: int, keel: int, duration: float, report: Report
) -> None:
    """The spike, sent to `front` (the Keel node itself, or a proxy in front of it), with Keel's
    own figures read from `keel`: the saturation point (the best goodput of closed-loop lists
    and the critical reads), an unloaded run at 30% of it, then the ramp to 3x and the hold.
    Writes the figures and the checks into `report`."""
    ports = [front]

    async def measure_saturation(workers: int) -> float:
        """Goodput (2xx/s) with `workers` lists always outstanding, plus the critical reads."""
        critical = Stream("critical", "read", ports, lambda t: CRITICAL_RATE, environment.random_read(token))
        reads, (ok, _) = await asyncio.gather(
            run([critical], 10.0), _closed_loop(front, token, workers, 10.0)
        )
        return ok / 10.0 + len(ok_results(reads)) / 10.0

    asyncio.run(_closed_loop(front, token, 8, 3.0))  # warm-up
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
    within, shed_total = asyncio.run(_server_side_shed_time(keel))
    hold = [r for r in spiked if r.scheduled >= ramp + 2]
    hold_seconds = duration - ramp - 2
    goodput = len(ok_results(hold)) / hold_seconds
    unloaded_p99 = percentile([r.latency for r in ok_results(unloaded) if r.kind == "list"], 99)
    admitted_p99 = percentile([r.latency for r in ok_results(hold) if r.kind == "list"], 99)
    critical = [r for r in spiked if r.kind == "read"]
    critical_success = len(ok_results(critical)) / len(critical)
    rejected = [r for r in hold if r.status == 503]
    rejection_p99 = percentile([r.latency for r in rejected], 99)
    report.figures = {
        "peak_goodput_per_s": round(peak, 1),
        "list_saturation_per_s": round(list_peak, 1),
        "offered_at_hold_per_s": round(3 * list_peak + CRITICAL_RATE, 1),
        "goodput_at_hold_per_s": round(goodput, 1),
        "unloaded_list_p99_ms": ms(unloaded_p99),
        "admitted_list_p99_ms_at_hold": ms(admitted_p99),
        "critical_requests": len(critical),
        "critical_success": critical_success,
        "shed_503_at_hold": len(rejected),
        "rejection_p99_ms": ms(rejection_p99),
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
        f"{ms(admitted_p99)} ms vs unloaded {ms(unloaded_p99)} ms",
    )
    report.check(
        "critical traffic >= 99% success",
        critical_success >= 0.99,
        f"{critical_success:.2%} of {len(critical)}",
    )
    report.check(
        "rejections answered in <= 5 ms (p99, as the client sees it)",
        bool(rejected) and rejection_p99 <= 0.005,
        f"p99 {ms(rejection_p99)} ms over {len(rejected)} rejections (the load generator's own timer"
        f" lag p99: {ms(generator_lag_p99)} ms)",
    )
    report.check(
        "rejections answered in <= 5 ms (99%, inside Keel: from the request to the response)",
        shed_total > 0 and within / shed_total >= 0.99,
        f"{within / max(shed_total, 1):.2%} of {shed_total:.0f} within 5 ms"
        " (Keel's keel_http_request_duration_seconds)",
    )


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
