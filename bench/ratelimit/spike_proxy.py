"""Spike through HAProxy (issue 20): the spike scenario's load sent to HAProxy, configured as
deploy/haproxy/haproxy.cfg, in front of one Keel node. The node publishes its adaptive
concurrency limit through the agent check (KEEL_AGENT_PORT), so HAProxy holds whatever is past
the limit in its queue (lists behind critical reads: priority classes) for `timeout queue` (1 s),
then answers the overflow itself with a 503 and a jittered Retry-After.

The same run first measures the spike sent straight to a node of its own (as `spike` does), so
that the two configurations are compared on one machine state. Each configuration measures its
own saturation point first; the targets are judged against it. The discrete-event simulation of
the same path (`python -m bench.admission_simulation`) predicts these figures; this is the real
run to compare with it. Writes a dated report under docs/performance/.
"""

from __future__ import annotations

import os
import time

from testkit.ports import free_port
from testkit.results import new_result_path
from testkit.servers.haproxy import haproxy

from bench.harness import code_state
from bench.ratelimit.shared import SERVICE_CPUS, Environment, Report, keel_nodes, warm
from bench.ratelimit.spike import measure_spike

_NO_LIMITS = {"KEEL_RATELIMIT_ENABLED": "false"}


def spike_proxy(environment: Environment, duration: float) -> Report:
    report = Report("spike-proxy")
    direct = Report("spike, direct (same run)")
    token = environment.keys("unlimited", 1)[0]
    print("  straight to the node:", flush=True)
    with keel_nodes(environment, 1, "spike-direct", **_NO_LIMITS) as ports:
        warm(environment, ports, [token])
        measure_spike(environment, token, ports[0], ports[0], duration, direct)
    agent = free_port()
    print("  through HAProxy, fed by the node's agent check:", flush=True)
    with keel_nodes(environment, 1, "spike-proxied", **_NO_LIMITS, KEEL_AGENT_PORT=str(agent)) as ports:
        directory = environment.logs / f"spike-haproxy-{time.monotonic_ns()}"
        with haproxy(directory, [("n0", ports[0])], agents={"n0": agent}) as proxy:
            proxy.wait_for({"n0": "UP"})
            if SERVICE_CPUS:
                os.sched_setaffinity(proxy.pid, SERVICE_CPUS)
            warm(environment, [proxy.port], [token])
            measure_spike(environment, token, proxy.port, ports[0], duration, report)
    report.figures["direct_same_run"] = direct.figures
    _write(report, direct, duration)
    return report


def _write(proxied: Report, direct: Report, duration: float) -> None:
    rows = [
        ("peak goodput /s", "peak_goodput_per_s"),
        ("offered at the hold /s", "offered_at_hold_per_s"),
        ("goodput at the hold /s", "goodput_at_hold_per_s"),
        ("unloaded list p99 ms", "unloaded_list_p99_ms"),
        ("admitted list p99 ms at the hold", "admitted_list_p99_ms_at_hold"),
        ("critical success", "critical_success"),
        ("503s at the hold", "shed_503_at_hold"),
        ("refusal p99 ms (client)", "rejection_p99_ms"),
    ]
    lines = [
        f"# Spike through HAProxy, against the node alone ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python bench/ratelimit_scenarios.py spike-proxy --duration {duration:g}`. Code:"
        f" {code_state()}. One Keel node (PostgreSQL, 10,000 profiles; rate limits off, load shedding"
        " on), on CPU 0 with PostgreSQL, Redis and HAProxy; the load generator on CPU 1, open loop:"
        f" critical reads at 40/s and lists ramping from 0.5x to 3x the list saturation point over"
        f" {duration / 2:g} s, then held. Each configuration has a node of its own and measures its own"
        " saturation point first. Through HAProxy: deploy/haproxy/haproxy.cfg (`timeout queue 1s`,"
        " lists in a lower priority class), the node's adaptive limit as its maxconn (agent check).",
        "",
        "| figure | straight to the node | through HAProxy |",
        "|---|---|---|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {direct.figures.get(key)} | {proxied.figures.get(key)} |")
    lines += ["", "Statuses at the hold:", ""]
    lines.append(f"- straight to the node: {direct.figures.get('statuses_at_hold')}")
    lines.append(f"- through HAProxy: {proxied.figures.get('statuses_at_hold')}")
    lines += ["", "Checks, straight to the node:", ""]
    lines += [f"- [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.figure}" for c in direct.checks]
    lines += ["", "Checks, through HAProxy:", ""]
    lines += [f"- [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.figure}" for c in proxied.checks]
    lines.append("")
    path = new_result_path("spike-proxy")
    path.write_text("\n".join(lines))
    print(f"  written: {path}", flush=True)
