"""The capacity plan checked on this machine (issue 20): the fleet `keel capacity plan` gives for
a peak is started behind HAProxy (deploy/haproxy/haproxy.cfg, each node's adaptive limit fed
through its agent check), and the peak is sent to it open loop: the SLO must hold. Then the same
fleet gets its planned capacity (the peak × (1 + headroom), the same run's reference for
goodput) and 3× the peak: the proxy and the shedder must keep goodput.

    python -m bench.capacity_check [--measurement docs/performance/<date>-capacity.json]
        [--peak-rps N] [--seconds 20] [--rounds 2]

- The measurement is the newest `*-capacity.json` (python -m bench.capacity) unless named.
- The plan is asked with one worker a node (an agent check reports one process's limit) and no
  spare node. Without `--peak-rps`, the peak is the largest whose plan is one node: scaled
  down to what this 2-core machine hosts beside the load generator, PostgreSQL and Redis.
- Load: the measurement's mix (its read share), `keel.capacity.load` (open loop, Poisson) on
  profiles made for the run; deployed defaults except a plan too large to refuse anything.
- Each round sends the peak, the planned capacity, then 3× the peak, `--seconds` each; the
  rounds' figures for the planned capacity are the A/A pair for the noise.

Checks: at the peak, the p99 of every request sent (a failure the slowest) <= the plan's SLO
and at most 1 % failed; at 3× the
peak, 2xx answers/s >= 90 % of those at the planned capacity in the same round. A new dated
report under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, keel_output, server  # noqa: E402
from testkit.results import RESULTS, new_result_path  # noqa: E402
from testkit.servers.haproxy import haproxy  # noqa: E402
from testkit.servers.redis import redis_server  # noqa: E402

from bench.harness import bench_key, code_state, deployed_env, run_on_postgres  # noqa: E402
from keel.capacity.load import Client, Target, open_loop  # noqa: E402
from keel.capacity.measure import Measurement, Ramp, Workload, load_measurement  # noqa: E402
from keel.capacity.plan import Need, Plan, plan  # noqa: E402
from keel.capacity.steps import Step  # noqa: E402

HEADROOM = 0.3
OVERLOAD = 3.0


def _newest_measurement() -> Path:
    found = list(RESULTS.glob("*-capacity*.json"))
    if not found:
        raise SystemExit("no *-capacity.json under docs/performance: run python -m bench.capacity first")
    # By when each was measured: names sort `-capacity-2` before `-capacity`, `-10` before `-2`.
    return max(found, key=lambda path: json.loads(path.read_text())["measured_at"])


def _plan(measurement: Measurement, peak: float | None) -> tuple[float, Plan]:
    def need(rps: float) -> Need:
        return Need(
            peak_rps=rps,
            read_share=measurement.ramp.read_share,
            p99_slo_ms=measurement.ramp.p99_slo_ms,
            headroom=HEADROOM,
            spare_nodes=0,
            workers_per_node=1,
        )

    if peak is None:
        peak = math.floor(plan(measurement, need(1.0)).node_rps / (1 + HEADROOM))
    return peak, plan(measurement, need(peak))


async def _round(
    url: str, token: str, measurement: Measurement, peak: float, seconds: float, seed: int
) -> list[Step]:
    ramp = Ramp(
        start_rps=peak,
        step_rps=peak,
        max_rps=peak,
        step_seconds=seconds,
        p99_slo_ms=measurement.ramp.p99_slo_ms,
        read_share=measurement.ramp.read_share,
        kinds=("mix",),
        # Enough connections for the overload to reach HAProxy's queue (1 s) rather than wait in
        # this client's: 1.5 s of the 3× rate.
        connections=min(2048, math.ceil(OVERLOAD * peak * 1.5)),
    )
    client = Client(Target.parse(url, token), ramp.connections, ramp.timeout_seconds)
    workload = Workload(client, ramp)
    steps = []
    try:
        await workload.create()
        request = workload.request("mix")
        await open_loop(client, peak, 3.0, request, seed=seed)  # warm-up
        for index, rate in enumerate((peak, peak * (1 + HEADROOM), peak * OVERLOAD)):
            step = await open_loop(client, rate, seconds, request, seed=seed * 10 + index)
            print(
                f"  {rate:,.0f}/s offered: {step.throughput:,.0f}/s 2xx, p99 {step.p99_ms:.1f} ms,"
                f" failed {step.failures or 0}, waited for a connection {step.waited_for_connection}",
                flush=True,
            )
            steps.append(step)
            await asyncio.sleep(2)  # the queue and the controller settle between steps
    finally:
        await workload.delete()
        await client.close()
    return steps


def _benchmark(url: str, args: argparse.Namespace) -> int:
    state = code_state()
    source = Path(args.measurement) if args.measurement else _newest_measurement()
    measurement = load_measurement(str(source))
    peak, fleet = _plan(measurement, args.peak_rps)
    print(f"code: {state}; measurement {source.name}; peak {peak:,.0f}/s", flush=True)
    print("\n".join(fleet.lines), flush=True)
    if fleet.nodes is None or fleet.nodes > 2:
        print(f"the plan is {fleet.nodes} nodes: more than this machine hosts (2 at most)", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="keel-capacity-check-"))
    rounds: list[list[Step]] = []
    with redis_server() as redis, ExitStack() as stack:
        env = deployed_env(
            url,
            redis.url,
            KEEL_TRUSTED_PROXY_HOPS="1",
            # Longer than HAProxy keeps an idle connection to a node for reuse (docs/fleet.md).
            KEEL_HTTP_KEEP_ALIVE_SECONDS="75",
            KEEL_DB_POOL_MAX=str(fleet.pool_per_worker),
        )
        keel_output(env, "migrate", timeout=120)
        token = bench_key(env)
        nodes = []
        for n in range(fleet.nodes):
            port, agent = free_port(), free_port()
            node_env = {**env, "KEEL_PORT": str(port), "KEEL_AGENT_PORT": str(agent)}
            stack.enter_context(
                server(f"keel node {n}", keel_cmd("serve"), node_env, logs / f"keel-{n}.log", port)
            )
            nodes.append((f"n{n}", port, agent))
        proxy = stack.enter_context(
            haproxy(
                logs / "haproxy",
                [(name, port) for name, port, _ in nodes],
                agents={name: agent for name, _, agent in nodes},
            )
        )
        proxy.wait_for({name: "UP" for name, _, _ in nodes})
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", flush=True)
            rounds.append(
                asyncio.run(_round(proxy.url, token, measurement, peak, args.seconds, seed=number + 1))
            )
    return _write(source, measurement, peak, fleet, rounds, args, state)


def _write(
    source: Path,
    measurement: Measurement,
    peak: float,
    fleet: Plan,
    rounds: list[list[Step]],
    args: argparse.Namespace,
    state: str,
) -> int:
    slo = measurement.ramp.p99_slo_ms
    lines = [
        f"# The capacity plan checked: {fleet.nodes} node(s) × 1 worker behind HAProxy,"
        f" a peak of {peak:,.0f}/s",
        "",
        f"Written by `python -m bench.capacity_check {' '.join(sys.argv[1:])}`. Code: {state}. Plan from"
        f" [{source.name}]({source.name}) (`keel capacity plan {source.name} --peak-rps {peak:g} --read-share"
        f" {measurement.ramp.read_share:g} --p99-slo-ms {slo:g} --headroom {HEADROOM:g} --spare-nodes 0"
        " --workers-per-node 1`):",
        "",
        "```",
        *fleet.lines,
        "```",
        "",
        "The fleet behind HAProxy (deploy/haproxy/haproxy.cfg: agent checks, `timeout queue 1s`, lists"
        f" in a lower priority class), on PostgreSQL and Redis, pool {fleet.pool_per_worker} a node as"
        f" planned; the mix ({measurement.ramp.read_share:.0%} reads) open loop from"
        f" `keel.capacity.load`, {args.seconds:g} s a step: the peak, the planned capacity (peak × 1.3:"
        " the same round's reference for goodput), 3× the peak. Everything shares this machine's 2 cores.",
        "",
        "| round | offered/s | 2xx/s | failed | p50 ms (2xx) | p99 ms (2xx) | p99 ms (all sent)"
        " | waited for a client connection |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for number, steps in enumerate(rounds, 1):
        for step in steps:
            failed = ", ".join(f"{what}: {count:,}" for what, count in step.failures.items()) or "0"
            lines.append(
                f"| {number} | {step.offered_rps:,.0f} | {step.throughput:,.0f} | {failed} of {step.sent:,} |"
                f" {step.p50_ms:.1f} | {step.p99_ms:.1f} |"
                f" {'over 1 % failed' if step.p99_all_ms is None else f'{step.p99_all_ms:.1f}'} |"
                f" {step.waited_for_connection:,} |"
            )
        at_peak, at_capacity, overload = steps
        goodput = overload.throughput / at_capacity.throughput if at_capacity.throughput else 0.0
        verdicts.append(
            (
                number,
                at_peak.within(slo),
                "over 1 % failed" if at_peak.p99_all_ms is None else f"{at_peak.p99_all_ms:.1f} ms",
                at_peak.failed_share,
                goodput,
            )
        )
    lines += [
        "",
        "| round | SLO held at the peak (p99, failed) | goodput at 3× ÷ at the planned capacity"
        " (target >= 0.90) |",
        "|---|---|---|",
    ]
    for number, held, p99, share, goodput in verdicts:
        lines.append(
            f"| {number} | {'yes' if held else 'no'} (p99 of all sent {p99}, {share:.2%} failed) |"
            f" {goodput:.2f} {'met' if goodput >= 0.9 else 'not met'} |"
        )
    references = [steps[1].throughput for steps in rounds]
    if len(references) > 1:
        spread = (max(references) - min(references)) / min(references)
        each = ", ".join(f"{c:,.0f}" for c in references)
        lines += ["", f"A/A: the planned capacity's 2xx/s differed by {spread:.1%} between rounds ({each})."]
    path = new_result_path("capacity-check")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    # Exit 1 when a check failed: the report says which.
    return 0 if all(held and goodput >= 0.9 for _, held, _, _, goodput in verdicts) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measurement")
    parser.add_argument("--peak-rps", type=float)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
