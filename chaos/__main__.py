"""`python -m chaos [experiment names...]`: run the experiments in chaos/experiments
(all of them by default), print each one's figures and checks, exit 1 if any check failed.
Ctrl-C or SIGTERM stops the experiment and every server it started, then exits 130."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from testkit.processes import REPO
from testkit.results import new_result_path

from chaos.runner import EXPERIMENTS, run_experiment

# Set by Ctrl-C or SIGTERM: the run ends with 130 even if an experiment finished meanwhile.
INTERRUPTED = threading.Event()


async def _main(
    names: list[str],
    seed: int,
    output: Path | None,
    time_scale: float,
    compare_pollers: bool,
) -> int:
    # Ctrl-C and SIGTERM cancel this task, so the experiment's `async with System` stops every
    # server on the way out. One cancel is not enough: a fresh-clone run once saw a Ctrl-C right
    # after "system up" swallowed (on 3.11 a cancel that meets an expiring `asyncio.timeout` can
    # come out as TimeoutError, which the experiment counts as a failed request) and the
    # experiment ran to its end. So the cancel is repeated until the task has ended.
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()

    def cancel_until_done() -> None:
        INTERRUPTED.set()
        if not main_task.done():
            main_task.cancel()
            loop.call_later(0.5, cancel_until_done)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, cancel_until_done)
    paths = sorted(EXPERIMENTS.glob("*.json"))
    load_before = os.getloadavg()
    if names:
        paths = [p for p in paths if p.stem in names or any(p.stem.startswith(n) for n in names)]
    failed = 0
    report = []
    compared: list[str] = []
    for path in paths:
        spec = json.loads(path.read_text())
        print(f"== {path.stem}: {spec['title']}", flush=True)
        passed, results, details = await run_experiment(
            spec, seed=seed, time_scale=time_scale, compare_pollers=compare_pollers
        )
        for result in results:
            print(result.line(), flush=True)
        for text in details.values():
            print("  " + text.replace("\n", "\n  "), flush=True)
        failed += not passed
        if compare_pollers:
            compared += [f"## {path.stem}", "", "```", details["healthz"], details["pollers"], "```", ""]
        report.append(
            {
                "experiment": path.stem,
                "passed": passed,
                "details": details,
                "results": [
                    {
                        "name": r.name,
                        "value": r.value,
                        "tolerance": r.tolerance,
                        "basis": r.basis,
                        "passed": r.passed,
                    }
                    for r in results
                ],
            }
        )
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n")  # noqa: ASYNC240 - once, at the end
    print(f"{len(paths) - failed} of {len(paths)} experiments passed", flush=True)
    if compare_pollers:
        written = _write_poller_comparison(compared, names, time_scale, load_before)
        print(f"pollers compared: {written}", flush=True)
    return 1 if failed else 0


class _Tee(io.TextIOBase):
    """What is printed goes to `out` and is kept, for `--record`."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self._out.write(text)

    def flush(self) -> None:
        self._out.flush()


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=False)
    return done.stdout.strip()


def _command(names: list[str], time_scale: float, *flags: str) -> str:
    command = " ".join(["python -m chaos", *names, *flags])
    return command + (f" --time-scale {time_scale:g}" if time_scale != 1.0 else "")


def _commit() -> str:
    """The checked-out commit, as the run starts (its files are what the servers run)."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    return commit


def _write_record(printed: str, commit: str, load_before: tuple[float, float, float], status: int) -> Path:
    """`--record`: the run's printed report as a new dated file under docs/performance/."""
    path = new_result_path("chaos")
    stamp = datetime.now(UTC)
    command = " ".join(["python -m chaos", *map(shlex.quote, sys.argv[1:])])  # as it was run
    machine = (
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    header = [
        f"# Chaos experiments: one run ({stamp:%Y-%m-%d})",
        "",
        f"Command: `{command}` ({stamp:%H:%M} UTC; commit {commit}; {machine}). Exit status {status}.",
        "",
        "What each check claims, and why its bound is what it is:"
        " [testing.md](../testing.md#failure-experiments). The report as the run printed it:",
        "",
        "```text",
    ]
    path.write_text("\n".join([*header, printed.rstrip("\n"), "```", ""]))
    return path


def _write_poller_comparison(
    sections: list[str], names: list[str], time_scale: float, load_before: tuple[float, float, float]
) -> Path:
    """`--compare-pollers` figures as a new dated file under docs/performance/ (a new run is a
    new file, never an edit of an old one)."""
    path = new_result_path("healthz-pollers")
    stamp = datetime.now(UTC)
    command = _command(names, time_scale, "--compare-pollers")
    load_after = os.getloadavg()
    header = [
        f"# /healthz: a poller of its own process vs one on the chaos runner's loop ({stamp:%Y-%m-%d})",
        "",
        f"Command: `{command}` ({stamp:%H:%M} UTC; {os.cpu_count()} CPUs; load average before"
        f" {load_before[0]:.2f}, after {load_after[0]:.2f}, shared with other work).",
        "",
        "Both pollers ran in the same run, every 50 ms. The ratio to read: the runner's-loop poller's"
        " p99 over the own-process poller's p99 in the same phase; the runner's loop lag during"
        " each in-loop poll says how much of the difference was the runner's own delay. Keel's"
        " event-loop lag (keel_event_loop_lag_seconds) is the server's view, at bucket resolution.",
        "",
    ]
    path.write_text("\n".join(header + sections))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="experiment file names (or prefixes); all by default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=float(os.environ.get("KEEL_CHAOS_TIME_SCALE", "1")),
        help="multiplies every phase's length (CI runs 0.5); default $KEEL_CHAOS_TIME_SCALE or 1",
    )
    parser.add_argument(
        "--compare-pollers",
        action="store_true",
        help="also poll /healthz on the runner's own event loop and report both pollers (a diagnostic)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write the printed report to a new dated file under docs/performance/",
    )
    arguments = parser.parse_args()
    load_before = os.getloadavg()
    commit = _commit() if arguments.record else ""
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee) if arguments.record else contextlib.nullcontext():
            status = asyncio.run(
                _main(
                    arguments.names,
                    arguments.seed,
                    arguments.output,
                    arguments.time_scale,
                    arguments.compare_pollers,
                )
            )
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = 130
    if INTERRUPTED.is_set():
        print("interrupted; every server stopped", file=sys.stderr, flush=True)
        status = 130
    elif arguments.record:
        written = _write_record(tee.kept.getvalue(), commit, load_before, status)
        print(f"recorded: {written}", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
