"""`python -m chaos [experiment names...]`: run the experiments in chaos/experiments
(all of them by default), print each one's figures and checks, exit 1 if any check failed.
Ctrl-C or SIGTERM stops the experiment and every server it started, then exits 130."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from chaos.runner import EXPERIMENTS, run_experiment


async def _main(names: list[str], seed: int, output: Path | None, time_scale: float) -> int:
    # SIGTERM does what asyncio.run already does on Ctrl-C: cancel this task, so the experiment's
    # `async with System` stops every server on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    paths = sorted(EXPERIMENTS.glob("*.json"))
    if names:
        paths = [p for p in paths if p.stem in names or any(p.stem.startswith(n) for n in names)]
    failed = 0
    report = []
    for path in paths:
        spec = json.loads(path.read_text())
        print(f"== {path.stem}: {spec['title']}", flush=True)
        passed, results, details = await run_experiment(spec, seed=seed, time_scale=time_scale)
        for result in results:
            print(result.line(), flush=True)
        for text in details.values():
            print("  " + text.replace("\n", "\n  "), flush=True)
        failed += not passed
        report.append(
            {
                "experiment": path.stem,
                "passed": passed,
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
    return 1 if failed else 0


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
    arguments = parser.parse_args()
    try:
        status = asyncio.run(_main(arguments.names, arguments.seed, arguments.output, arguments.time_scale))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every server stopped", file=sys.stderr, flush=True)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
