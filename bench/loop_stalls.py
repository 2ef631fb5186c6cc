"""What blocks Keel's event loop: run `keel serve` with a watcher thread that pings the loop every
5 ms and, while a ping waits longer than `--threshold-ms`, samples the loop thread's Python
stack. At exit it prints each stall (when, how long, the stack seen most while it lasted) and a
summary to stderr, or to `--report` as JSON.

    python -m bench.loop_stalls [--threshold-ms 20] [--report stalls.json] -- serve --port 8000

A diagnostic, not a benchmark: the watcher itself costs a wake-up every 5 ms, and it sees a
stall only at the interpreter's switch interval (5 ms) granularity.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

PING_S = 0.005
SAMPLE_S = 0.001


@dataclass
class Stall:
    at_s: float  # since the server started serving (start-up included)
    duration_ms: float
    gc_collections: int  # cyclic-GC passes that ran during the stall (gc.callbacks)
    stack: list[str] = field(default_factory=list)  # the stack seen most often, innermost last


class LoopWatcher:
    def __init__(self, threshold_s: float) -> None:
        self._threshold = threshold_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.main_thread().ident
        self._started = time.monotonic()
        self.stalls: list[Stall] = []
        self.pings = 0
        self._gc_passes = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_passes += 1

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._started = time.monotonic()
        threading.Thread(target=self._watch, name="loop-stall-watcher", daemon=True).start()

    def _watch(self) -> None:
        assert self._loop is not None
        while not self._loop.is_closed():
            answered = threading.Event()
            sent = time.monotonic()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:
                return  # the loop closed
            if not answered.wait(self._threshold):
                self._sample(sent, answered)
            self.pings += 1
            time.sleep(PING_S)

    def _sample(self, sent: float, answered: threading.Event) -> None:
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        gc_before = self._gc_passes
        while not answered.wait(SAMPLE_S):
            frame = sys._current_frames().get(self._loop_thread or 0)
            if frame is not None:
                stacks[_stack(frame)] += 1
        duration = time.monotonic() - sent
        top = list(stacks.most_common(1)[0][0]) if stacks else []
        self.stalls.append(Stall(sent - self._started, duration * 1000, self._gc_passes - gc_before, top))

    def report(self) -> dict[str, object]:
        durations = sorted(s.duration_ms for s in self.stalls)
        return {
            "threshold_ms": self._threshold * 1000,
            "pings": self.pings,
            "stalls": len(self.stalls),
            "longest_ms": durations[-1] if durations else 0.0,
            "with_gc": sum(1 for s in self.stalls if s.gc_collections),
            "each": [asdict(s) for s in self.stalls],
        }


def _stack(frame: FrameType) -> tuple[str, ...]:
    entries = traceback.extract_stack(frame)[-40:]
    return tuple(f"{Path(e.filename).name}:{e.lineno} {e.name}" for e in entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--threshold-ms", type=float, default=20.0)
    parser.add_argument("--report", type=Path, help="JSON report here (default: a summary on stderr)")
    parser.add_argument("keel_args", nargs=argparse.REMAINDER, help="-- then the `keel` arguments")
    args = parser.parse_args()
    keel_args = args.keel_args[1:] if args.keel_args[:1] == ["--"] else args.keel_args
    watcher = LoopWatcher(args.threshold_ms / 1000)

    # The loop is created by uvicorn: attach when it starts running the server.
    import uvicorn

    original_serve = uvicorn.Server._serve

    def write_report() -> None:
        report = watcher.report()
        if args.report is not None:
            args.report.write_text(json.dumps(report, indent=2) + "\n")
        stalls = report["each"]
        assert isinstance(stalls, list)
        print(
            f"loop stalls >= {args.threshold_ms:g} ms: {report['stalls']} in {report['pings']} pings, "
            f"longest {report['longest_ms']:.1f} ms, {report['with_gc']} with a GC pass",
            file=sys.stderr,
        )
        for stall in stalls[:20]:
            where = " < ".join(reversed(stall["stack"][-4:]))
            print(
                f"  at {stall['at_s']:7.2f}s {stall['duration_ms']:6.1f} ms "
                f"gc={stall['gc_collections']} {where}",
                file=sys.stderr,
            )

    async def serve(self: uvicorn.Server, sockets: object = None) -> None:
        watcher.attach(asyncio.get_running_loop())
        try:
            await original_serve(self, sockets)  # type: ignore[arg-type]
        finally:
            # Here, not at exit: uvicorn re-raises SIGTERM after a graceful shutdown.
            write_report()

    uvicorn.Server._serve = serve  # type: ignore[method-assign]
    from keel.cli import main as keel_main

    sys.argv = ["keel", *keel_args]
    keel_main()


if __name__ == "__main__":
    main()
