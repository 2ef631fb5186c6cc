"""Noisy neighbour: one client at 50x its quota beside 20 well-behaved ones at half of theirs, on
two Keel processes sharing Redis."""

from __future__ import annotations

import asyncio

from testkit.loadgen import (
    OTHER_LAG,
    OWN_LAG,
    Result,
    run,
)
from testkit.percentile import percentile

from bench.ratelimit.shared import (
    BENCH_QUOTA,
    Environment,
    Report,
    cpu_seconds,
    flush_limits,
    good_streams,
    keel_nodes,
    ms,
    ok_results,
    refusal_floor,
    start_abuser,
    warm,
)


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
        warm(environment, ports, good)

        def measured(label: str, abuser_ports: list[int] | None) -> tuple[list[Result], float, float]:
            flush_limits(environment)
            print(f"  {label}, {duration:g}s ...", flush=True)
            watched = [*ports, *floor_ports]
            cpu_before = cpu_seconds(watched)
            collect = start_abuser(environment, abuser_ports, abuser, duration) if abuser_ports else None
            results = asyncio.run(run(good_streams(environment, ports, good), duration))
            lag = percentile(OWN_LAG, 99)
            if collect is not None:
                results += collect()
            return results, cpu_seconds(watched) - cpu_before, lag

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
    success = len(ok_results(loud_good)) / len(loud_good)
    p99_first, p99_again = percentile(good_latencies(quiet), 99), percentile(good_latencies(again), 99)
    p99_quiet = percentile(good_latencies(quiet) + good_latencies(again), 99)
    p99_loud = percentile(good_latencies(loud), 99)
    p99_floor = percentile(good_latencies(floored), 99)
    cpu_alone = (cpu_quiet + cpu_again) / 2
    admitted = len(ok_results(abusive))
    expected = BENCH_QUOTA * duration + 10
    report.figures = {
        "well_behaved_requests": len(loud_good),
        "well_behaved_success": success,
        "well_behaved_p99_ms_without_abuser": ms(p99_quiet),
        "well_behaved_p99_ms_without_abuser_first_run": ms(p99_first),
        "well_behaved_p99_ms_without_abuser_second_run": ms(p99_again),
        "well_behaved_p99_ms_with_abuser": ms(p99_loud),
        "well_behaved_p99_ms_with_abuser_at_refusal_floor": ms(p99_floor),
        "well_behaved_p50_ms_with_abuser": ms(percentile(good_latencies(loud), 50)),
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
        "generator_lag_p99_ms_without_abuser": ms(lag_quiet),
        "generator_lag_p99_ms_with_abuser": ms(lag_loud),
        "generator_lag_p99_ms_with_abuser_at_refusal_floor": ms(lag_floored),
        "abuser_generator_lag_p99_ms": ms(percentile(OTHER_LAG, 99)),
        "transport_errors": sorted({r.headers.get("error", "") for r in loud if r.status == 0}),
    }
    report.check("well-behaved success >= 99.9%", success >= 0.999, f"{success:.4%} of {len(loud_good)}")
    report.check(
        "well-behaved p99 within +10% of the run without the abuser",
        p99_loud <= p99_quiet * 1.10,
        f"{ms(p99_loud)} ms vs {ms(p99_quiet)} ms ({p99_loud / p99_quiet - 1:+.1%}); the two runs"
        f" without it: {ms(p99_first)} and {ms(p99_again)} ms; with the abuser at the refusal"
        f" floor app instead: {ms(p99_floor)} ms ({p99_floor / p99_quiet - 1:+.1%})",
    )
    report.check(
        "abuser admitted within 5% of quota + burst",
        abs(admitted - expected) <= 0.05 * expected,
        f"{admitted} admitted of {len(abusive)} offered; quota x {duration:g}s + burst = {expected:g}",
    )
    return report
