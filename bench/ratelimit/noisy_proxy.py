"""Noisy neighbour through HAProxy (issue 20): the `noisy` load, every request sent to HAProxy
(the deployed configuration) in front of the two Keel processes, which write the keys they refuse
to HAProxy's table (KEEL_PROXY_RUNTIME_API), so that the abuser's flood is refused there.

Four runs of `duration`: the well-behaved clients alone; with the abuser; alone again (the
reference p99 is both runs alone together, and their difference is the measurement's noise);
then the abuser again against two other Keel processes that do not write to HAProxy (every
abusive request reaches Keel, as before this issue). HAProxy runs on the service side's CPU, as
Keel does. Writes a dated report under docs/performance/ besides the scenarios' JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator

from testkit.loadgen import OWN_LAG, Result, run
from testkit.percentile import percentile
from testkit.results import new_result_path
from testkit.servers.haproxy import Haproxy, haproxy

from bench.harness import code_state
from bench.ratelimit.shared import (
    BENCH_QUOTA,
    SERVICE_CPUS,
    Environment,
    Report,
    cpu_seconds,
    flush_limits,
    good_streams,
    keel_nodes,
    ms,
    ok_results,
    start_abuser,
    warm,
)
from bench.read_figures import process_cpu_seconds

TOLD = "Keel writes refusals to HAProxy"
UNTOLD = "Keel does not (every request reaches it)"
Runs = dict[str, tuple[list[Result], float, float, float]]  # results, Keel CPU s, HAProxy CPU s, lag


@contextlib.contextmanager
def _fronted(environment: Environment, name: str, *, told: bool) -> Iterator[tuple[Haproxy, list[int]]]:
    directory = environment.logs / f"{name}-haproxy-{time.monotonic_ns()}"
    overrides = {"KEEL_PROXY_RUNTIME_API": f"unix:{directory / 'operator.sock'}"} if told else {}
    with keel_nodes(environment, 2, name, **overrides) as ports:
        nodes = [(f"n{n}", port) for n, port in enumerate(ports)]
        with haproxy(directory, nodes) as proxy:
            proxy.wait_for({node: "UP" for node, _ in nodes})
            if SERVICE_CPUS:
                os.sched_setaffinity(proxy.pid, SERVICE_CPUS)
            yield proxy, ports


def noisy_proxy(environment: Environment, duration: float) -> Report:
    report = Report("noisy-proxy")
    good = environment.keys("bench", 20)
    abuser = environment.keys("bench", 1)[0]
    runs: Runs = {}

    def measured(label: str, proxy: Haproxy, ports: list[int], *, abusive: bool) -> None:
        flush_limits(environment)
        print(f"  {label}, {duration:g}s ...", flush=True)
        cpu_before, proxy_before = cpu_seconds(ports), process_cpu_seconds(proxy.pid)
        front = [proxy.port]
        collect = start_abuser(environment, front, abuser, duration) if abusive else None
        results = asyncio.run(run(good_streams(environment, front, good), duration))
        lag = percentile(OWN_LAG, 99)
        if collect is not None:
            results += collect()
        runs[label] = (
            results,
            cpu_seconds(ports) - cpu_before,
            process_cpu_seconds(proxy.pid) - proxy_before,
            lag,
        )

    with _fronted(environment, "noisy-told", told=True) as (proxy, ports):
        warm(environment, [proxy.port], good)
        measured("alone", proxy, ports, abusive=False)
        measured(f"with the abuser, {TOLD}", proxy, ports, abusive=True)
        measured("alone, again", proxy, ports, abusive=False)
    with _fronted(environment, "noisy-untold", told=False) as (proxy, ports):
        warm(environment, [proxy.port], good)
        measured(f"with the abuser, {UNTOLD}", proxy, ports, abusive=True)

    def good_latencies(label: str) -> list[float]:
        return [r.latency for r in runs[label][0] if r.client.startswith("good")]

    def abusive(label: str) -> list[Result]:
        return [r for r in runs[label][0] if r.client == "abuser"]

    told, untold = f"with the abuser, {TOLD}", f"with the abuser, {UNTOLD}"
    p99_first = percentile(good_latencies("alone"), 99)
    p99_again = percentile(good_latencies("alone, again"), 99)
    p99_quiet = percentile(good_latencies("alone") + good_latencies("alone, again"), 99)
    p99_told, p99_untold = percentile(good_latencies(told), 99), percentile(good_latencies(untold), 99)
    loud_good = [r for r in runs[told][0] if r.client.startswith("good")]
    success = len(ok_results(loud_good)) / len(loud_good)
    admitted = len(ok_results(abusive(told)))
    expected = BENCH_QUOTA * duration + 10
    # HAProxy's own 429 carries no RateLimit-Policy field; Keel's always does.
    at_proxy = sum(r.status == 429 and "ratelimit-policy" not in r.headers for r in abusive(told))
    cpu_alone = (runs["alone"][1] + runs["alone, again"][1]) / 2
    proxy_alone = (runs["alone"][2] + runs["alone, again"][2]) / 2
    report.figures = {
        "well_behaved_requests": len(loud_good),
        "well_behaved_success": success,
        "well_behaved_p99_ms_alone": ms(p99_quiet),
        "well_behaved_p99_ms_alone_first_run": ms(p99_first),
        "well_behaved_p99_ms_alone_second_run": ms(p99_again),
        "well_behaved_p99_ms_with_abuser_told": ms(p99_told),
        "well_behaved_p99_ms_with_abuser_untold": ms(p99_untold),
        "abuser_offered": len(abusive(told)),
        "abuser_admitted": admitted,
        "abuser_expected_quota_plus_burst": expected,
        "abuser_refused_at_proxy": at_proxy,
        "abuser_refused_by_keel": sum(r.status == 429 for r in abusive(told)) - at_proxy,
        "keel_cpu_seconds_alone": round(cpu_alone, 2),
        "keel_cpu_seconds_with_abuser_told": round(runs[told][1], 2),
        "keel_cpu_seconds_with_abuser_untold": round(runs[untold][1], 2),
        "haproxy_cpu_seconds_alone": round(proxy_alone, 2),
        "haproxy_cpu_seconds_with_abuser_told": round(runs[told][2], 2),
        "haproxy_cpu_seconds_with_abuser_untold": round(runs[untold][2], 2),
        "generator_lag_p99_ms": {label: ms(run_[3]) for label, run_ in runs.items()},
        "abuser_other_statuses": sorted({r.status for r in abusive(told)} - {200, 429}),
    }
    report.check("well-behaved success >= 99.9%", success >= 0.999, f"{success:.4%} of {len(loud_good)}")
    report.check(
        "well-behaved p99 within +10% of the runs without the abuser",
        p99_told <= p99_quiet * 1.10,
        f"{ms(p99_told)} ms vs {ms(p99_quiet)} ms ({p99_told / p99_quiet - 1:+.1%}); the two runs alone:"
        f" {ms(p99_first)} and {ms(p99_again)} ms; with Keel not writing to HAProxy: {ms(p99_untold)} ms"
        f" ({p99_untold / p99_quiet - 1:+.1%})",
    )
    report.check(
        "abuser admitted within 5% of quota + burst",
        abs(admitted - expected) <= 0.05 * expected,
        f"{admitted} admitted of {len(abusive(told))} offered; quota x {duration:g}s + burst = {expected:g}",
    )
    _write(report, duration, runs)
    return report


def _write(report: Report, duration: float, runs: Runs) -> None:
    f = report.figures
    lines = [
        f"# Noisy neighbour through HAProxy ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python bench/ratelimit_scenarios.py noisy-proxy --duration {duration:g}`."
        f" Code: {code_state()}. Two Keel processes (PostgreSQL, 10,000 profiles, Redis shared) behind"
        " HAProxy from deploy/haproxy/haproxy.cfg, all on CPU 0 (Keel at nice 10); the load generator"
        " on CPU 1, open loop: 20 well-behaved clients at half their quota (5/s of 10/s), and one"
        " abuser at 50x its quota from a generator process of its own. Every request goes to HAProxy.",
        "",
        "| run | well-behaved p99 ms | Keel CPU s | HAProxy CPU s | abuser: offered / admitted |",
        "|---|---|---|---|---|",
    ]
    for label, (results, keel_cpu, proxy_cpu, _) in runs.items():
        good = [r.latency for r in results if r.client.startswith("good")]
        abusive = [r for r in results if r.client == "abuser"]
        offered = f"{len(abusive):,} / {len(ok_results(abusive)):,}" if abusive else "-"
        p99 = ms(percentile(good, 99))
        lines.append(f"| {label} | {p99} | {keel_cpu:.2f} | {proxy_cpu:.2f} | {offered} |")
    lines += [
        "",
        f"Of the abuser's refusals with Keel writing to HAProxy, {f['abuser_refused_at_proxy']:,} were"
        f" answered by HAProxy and {f['abuser_refused_by_keel']:,} by Keel.",
        "",
        *(f"- [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.figure}" for c in report.checks),
        "",
    ]
    path = new_result_path("noisy-proxy")
    path.write_text("\n".join(lines))
    print(f"  written: {path}", flush=True)
