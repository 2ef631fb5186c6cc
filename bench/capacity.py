"""The capacity report of this machine: `keel capacity measure` against `keel serve --workers N`
(N = 1, 2, 3) on a throwaway PostgreSQL and Redis, then `keel capacity plan` for a few peaks from
what it measured.

    python -m bench.capacity [--workers 1,2,3] [--step-seconds 4] [--peaks 500,2000,10000]

The servers run the deployed defaults (profile cache on, load shedding on, rate limits on Redis)
except for a plan too large to refuse anything. The load generator is `keel capacity measure`
itself, on the same two cores: its CPU is in the report. Results: a dated report with its JSON
and SVG plots (docs/performance/<date>-capacity.*), and the plans beside it
(docs/performance/<date>-capacity-plan.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.processes import keel_cmd, keel_output  # noqa: E402
from testkit.results import new_result_path  # noqa: E402
from testkit.servers.redis import redis_server  # noqa: E402

from bench.harness import bench_key, code_state, deployed_env, run_on_postgres  # noqa: E402


def _benchmark(url: str, args: argparse.Namespace) -> int:
    state = code_state()
    print(f"code: {state}", flush=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    with redis_server() as redis:
        env = deployed_env(url, redis.url)
        keel_output(env, "migrate", timeout=120)
        env["KEEL_CAPACITY_KEY"] = bench_key(env)
        report = new_result_path("capacity")
        base = report.with_suffix("")
        measure = [
            "capacity", "measure", "--start-workers", args.workers, "--redis-url-env", "KEEL_REDIS_URL",
            "--start-rps", str(args.start_rps), "--step-rps", str(args.step_rps),
            "--max-rps", str(args.max_rps),
            "--step-seconds", str(args.step_seconds), "--p99-slo-ms", str(args.p99_slo_ms),
            "--report", str(base),
        ]  # fmt: skip
        done = subprocess.run(keel_cmd(*measure), env=env, timeout=3600, check=False)
        if done.returncode != 0:
            print(f"keel capacity measure failed ({done.returncode})", file=sys.stderr)
            return done.returncode
    with report.open("a") as file:
        file.write(
            f"\nCode measured: {state}. Reproduce: `python -m bench.capacity {' '.join(sys.argv[1:])}`.\n"
        )
    return _plans(report, args, base_env, state)


def _plans(report: Path, args: argparse.Namespace, base_env: dict[str, str], state: str) -> int:
    """`keel capacity plan` for each of `--peaks` from `report`'s JSON, into a new dated file."""
    base = report.with_suffix("")
    plans = [
        f"# Fleet plans from [{report.name}]({report.name})",
        "",
        "Each: `keel capacity plan " + f"{base.name}.json --peak-rps N --read-share 0.9 --p99-slo-ms"
        f" {args.p99_slo_ms:g} --headroom 0.3`. Code: {state}.",
        "",
    ]
    for peak in args.peaks.split(","):
        command = ["capacity", "plan", f"{base}.json", "--peak-rps", peak, "--read-share", "0.9"]
        command += ["--p99-slo-ms", str(args.p99_slo_ms), "--headroom", "0.3"]
        planned = subprocess.run(
            keel_cmd(*command), env=base_env, capture_output=True, text=True, timeout=60, check=False
        )
        plans += [f"## Peak {int(peak):,}/s (exit {planned.returncode})", "", "```", planned.stdout.strip()]
        plans += [planned.stderr.strip(), "```", ""] if planned.stderr.strip() else ["```", ""]
    path = new_result_path("capacity-plan")
    path.write_text("\n".join(plans))
    print(f"wrote {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--start-rps", type=float, default=100)
    parser.add_argument("--step-rps", type=float, default=150)
    parser.add_argument("--max-rps", type=float, default=2500)
    parser.add_argument("--step-seconds", type=float, default=4)
    parser.add_argument("--p99-slo-ms", type=float, default=50)
    parser.add_argument("--peaks", default="500,2000,10000")
    parser.add_argument(
        "--plan-from", type=Path, help="only plan, from this report (its .md; the .json beside it)"
    )
    args = parser.parse_args()
    if args.plan_from:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        return _plans(args.plan_from.resolve(), args, base_env, code_state())
    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
