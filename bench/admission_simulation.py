"""The spike scenario in the discrete-event simulation (bench/admission_sim.py): service times
measured from a real served Keel, then offered load swept to 5x the list saturation, over
several seeds, with and without HAProxy in front and with several `timeout queue` values.

    python -m bench.admission_simulation [--requests 2000] [--seeds 3] [--duration 30]

1. Measure: `keel serve` (SQLite, cache and rate limits off, one worker) pinned to CPU 0; this
   process, the client, on CPU 1. After a warm-up, `--requests` sequential reads of random
   seeded ids, then as many lists of 50 (`GET /v1/profiles?limit=50`, the spike's lists). The
   server's CPU seconds for each batch come from /proc; each request's client-side latency
   gives the shape of the distribution. A request's simulated CPU time is its latency scaled by
   its batch's CPU per request over its batch's mean latency (so the mean is the measured CPU
   per request, the spread the measured latencies').
2. Simulate the spike scenario's streams (bench/ratelimit/spike.py): critical reads at 40/s and
   lists at a multiple of the list saturation point (the lists/s the measured CPU allows beside
   the reads), 0.3x (the scenario's unloaded run) to 5x. The first 5 s of each run are not
   counted.
3. Judge the spike's four targets at 3x (the scenario's hold) and 5x: goodput >= 90 % of the
   peak (the saturation point's goodput), admitted list p99 <= 2x the unloaded list p99 (same
   configuration at 0.3x), critical success >= 99 %, refusal p99 <= 5 ms.

Where this differs from the real scenario (bench/ratelimit/spike.py), beyond the model's own
limits (bench/admission_sim.py):
- The peak is computed from the measured mean CPU, not measured with closed-loop list workers.
- The load is constant from the start (no ramp); a run's first 5 s are not counted. The real
  scenario counts critical success over the whole run, ramp included.
- Goodput counts answers given between the warm-up and the end of the run; latencies and
  success rates are those of the requests that arrived in that window.
- A refusal by Keel costs `--refusal-us` of its CPU (default 80: a 429 cost 78.8 and 109 µs in
  docs/performance/2026-12-07-proxy-refusals*.md; a shed refusal does less work).

A new dated report under docs/performance/ and stdout.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

import httpx  # noqa: E402
from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, keel_output, server  # noqa: E402
from testkit.results import new_result_path  # noqa: E402

from bench.admission_sim import Result, Setting, simulate  # noqa: E402
from bench.harness import code_state, pin, sqlite_node_env  # noqa: E402
from bench.read_figures import process_cpu_seconds  # noqa: E402
from keel.resilience.load_shedder import Priority  # noqa: E402

CRITICAL_RATE = 40.0  # bench/ratelimit/spike.py
LIST_PATH = "/v1/profiles?limit=50"
PROFILES = 200
MULTIPLES = (0.3, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
UNLOADED = 0.3
JUDGED = (3.0, 5.0)
# name: (HAProxy in front, its `timeout queue` in seconds)
CONFIGURATIONS: dict[str, tuple[bool, float]] = {
    "no proxy: Keel sheds": (False, 1.0),
    "HAProxy, timeout queue 1 s (deploy/)": (True, 1.0),
    "HAProxy, timeout queue 50 ms": (True, 0.05),
    "HAProxy, timeout queue 5 ms": (True, 0.005),
}


def measure(requests: int, logs: Path) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]]]:
    """Per kind: simulated CPU seconds per request, and (CPU µs per request, mean latency ms)."""
    env = sqlite_node_env(logs)
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    port = free_port()
    env["KEEL_PORT"] = str(port)
    pin(os.getpid(), 1)
    samples: dict[str, list[float]] = {}
    figures: dict[str, tuple[float, float]] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with (
        server("node", keel_cmd("serve"), env, logs / "node.log", port) as node,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client,
    ):
        pin(node.pid, 0)
        ids = []
        for n in range(PROFILES):
            emails = [{"address": f"s{n}@example.com", "primary": True}]
            created = client.post("/v1/profiles", json={"handle": f"sim_{n}", "emails": emails})
            created.raise_for_status()
            ids.append(created.json()["id"])
        chooser = random.Random(7)

        def read_path() -> str:
            return f"/v1/profiles/{chooser.choice(ids)}"

        def list_path() -> str:
            return LIST_PATH

        paths: dict[str, Callable[[], str]] = {"read": read_path, "list": list_path}
        for kind, path in paths.items():
            for _ in range(200):  # warm-up
                client.get(path()).raise_for_status()
            latencies = []
            cpu_before = process_cpu_seconds(node.pid)
            for _ in range(requests):
                started = time.perf_counter()
                client.get(path()).raise_for_status()
                latencies.append(time.perf_counter() - started)
            cpu = (process_cpu_seconds(node.pid) - cpu_before) / requests
            mean = statistics.fmean(latencies)
            samples[kind] = [latency * cpu / mean for latency in latencies]
            figures[kind] = (cpu * 1e6, mean * 1e3)
    return samples, figures


def list_saturation(samples: dict[str, list[float]]) -> float:
    """Lists/s the CPU allows beside the critical reads: (1 - reads' share) / a list's CPU."""
    read, listed = (statistics.fmean(samples[k]) for k in ("read", "list"))
    return (1 - CRITICAL_RATE * read) / listed


def run(
    samples: dict[str, list[float]],
    multiple: float,
    configuration: tuple[bool, float],
    seed: int,
    duration: float,
    refusal_seconds: float,
) -> Result:
    proxy, timeout_queue = configuration
    setting = Setting(
        refusal_seconds=refusal_seconds,
        streams={"read": CRITICAL_RATE, "list": multiple * list_saturation(samples)},
        duration_s=duration,
        cpu_samples=samples,
        warmup_s=5.0,
        proxy=proxy,
        timeout_queue_s=timeout_queue,
    )
    return simulate(setting, seed)


def _range(values: list[float], fmt: str) -> str:
    """The median and the range of `values`; a seed without a value (no refusal: NaN) is left
    out and counted, and a cell with none is a dash."""
    known = [value for value in values if not math.isnan(value)]
    if not known:
        return "–"
    cell = f"{statistics.median(known):{fmt}} ({min(known):{fmt}}–{max(known):{fmt}})"
    missing = len(values) - len(known)
    return cell if not missing else f"{cell}, none in {missing} of {len(values)} seeds"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--refusal-us", type=float, default=80.0)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="keel-admission-sim-"))
    print(f"measuring service times ({args.requests} reads, {args.requests} lists) ...", flush=True)
    samples, figures = measure(args.requests, logs)
    lists = list_saturation(samples)
    peak = CRITICAL_RATE + lists
    print(f"  list saturation {lists:.0f}/s; peak goodput {peak:.0f}/s", flush=True)
    seeds = range(1, args.seeds + 1)
    lines = [
        f"# The spike scenario in the admission simulation ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python -m bench.admission_simulation --requests {args.requests} --seeds {args.seeds}"
        f" --duration {args.duration:g} --refusal-us {args.refusal_us:g}`. Code: {code_state()}."
        " Method: the module docstring of bench/admission_simulation.py; the model:"
        " bench/admission_sim.py. Simulated time, Keel's own `GradientLimit` and `LoadShedder`"
        " on the simulation's clock.",
        "",
        "Measured service times (served process on CPU 0, sequential client on CPU 1):",
        "",
        "| request | server CPU µs per request | mean latency ms (client) |",
        "|---|---|---|",
        *(f"| {kind} | {cpu:,.0f} | {latency:.2f} |" for kind, (cpu, latency) in figures.items()),
        "",
        f"List saturation beside {CRITICAL_RATE:g} reads/s: {lists:.0f} lists/s; peak goodput {peak:.0f}/s.",
        "",
        f"Each cell: the median over {args.seeds} seeds, and the lowest and highest in brackets.",
        "",
    ]
    verdicts: list[str] = []
    for name, configuration in CONFIGURATIONS.items():
        print(f"  {name} ...", flush=True)
        results = {
            m: [run(samples, m, configuration, s, args.duration, args.refusal_us / 1e6) for s in seeds]
            for m in MULTIPLES
        }
        unloaded_p99 = statistics.median(r.p(99, served=True, kind="list") for r in results[UNLOADED])
        lines += [
            f"## {name}",
            "",
            "| lists offered (× saturation) | goodput ÷ peak | admitted list p99 ms | critical success"
            " | refusal p99 ms | Keel's limit (mean after the warm-up)"
            " | list no-load latency at the end ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for multiple, runs in results.items():
            lines.append(
                f"| {multiple:g} | {_range([r.goodput_rps() / peak for r in runs], '.2f')}"
                f" | {_range([r.p(99, served=True, kind='list') * 1e3 for r in runs], '.1f')}"
                f" | {_range([r.success_rate(Priority.CRITICAL) * 100 for r in runs], '.2f')} %"
                f" | {_range([r.p(99, served=False) * 1e3 for r in runs], '.1f')}"
                f" | {_range([r.mean_limit() for r in runs], '.1f')}"
                f" | {_range([r.no_load_at_end['list'] * 1e3 for r in runs], '.1f')} |"
            )
        lines.append("")
        for multiple in JUDGED:
            runs = results[multiple]
            checks = {
                "goodput ≥ 90 % of peak": sum(r.goodput_rps() >= 0.9 * peak for r in runs),
                "admitted list p99 ≤ 2× unloaded": sum(
                    r.p(99, served=True, kind="list") <= 2 * unloaded_p99 for r in runs
                ),
                "critical ≥ 99 %": sum(r.success_rate(Priority.CRITICAL) >= 0.99 for r in runs),
                # 5 ms and a little: a queue timeout of exactly 5 ms is not failed by rounding.
                "refusal p99 ≤ 5 ms": sum(r.p(99, served=False) <= 0.005 + 1e-9 for r in runs),
            }
            met = ", ".join(
                f"{check}: {'met' if ok == len(runs) else 'NOT met'} ({ok} of {len(runs)} seeds)"
                for check, ok in checks.items()
            )
            verdicts.append(f"- {name}, {multiple:g}×: {met}.")
        lines.append(f"Unloaded list p99 (0.3×): {unloaded_p99 * 1e3:.1f} ms.")
        lines.append("")
    lines += ["## Verdicts", "", *verdicts, ""]
    report = "\n".join(lines)
    path = new_result_path("admission-simulation")
    path.write_text(report)
    print(report)
    print(f"written: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
