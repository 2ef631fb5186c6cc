from __future__ import annotations

import asyncio
import time
from pathlib import Path

from keel.bootstrap.protection import build_protection
from keel.config import Settings
from keel.observability.metrics import Metrics
from keel.resilience.loop_lag import PROBE_SECONDS, LoopLag


def test_behind_by_the_last_sample_or_by_a_probe_that_did_not_run() -> None:
    now = [0.0]
    lag = LoopLag(clock=lambda: now[0])
    seen: list[float] = []
    lag.subscribe(seen.append)
    lag.record(0.001)
    assert not lag.behind(0.01)
    lag.record(0.05)
    assert lag.behind(0.01)
    lag.record(0.0)
    now[0] += PROBE_SECONDS + 0.005
    assert not lag.behind(0.01)
    now[0] += 0.02  # the probe is overdue: the loop has not got round to it
    assert lag.behind(0.01)
    assert seen == [0.001, 0.05, 0.0]


async def test_a_blocked_event_loop_shows_in_keel_event_loop_lag_seconds(tmp_path: Path) -> None:
    """The process's own signal of a blocked loop, wired as `keel serve` wires it: blocking the
    loop for 60 ms makes the 10 ms probe wake at least 50 ms late, and /metrics says so."""
    metrics = Metrics()
    guards = build_protection(Settings(database_url=f"sqlite:///{tmp_path / 'keel.db'}"), metrics)
    woke: list[asyncio.Event] = [asyncio.Event()]
    guards.loop_lag.subscribe(lambda _lag: woke[0].set())
    watch = asyncio.create_task(guards.loop_lag.watch())
    try:
        await asyncio.wait_for(woke[0].wait(), 30)  # the probe runs
        woke[0] = asyncio.Event()
        time.sleep(0.06)  # noqa: ASYNC251 - the fault under test: a blocking call on the loop
        await asyncio.wait_for(woke[0].wait(), 30)
    finally:
        watch.cancel()
    registry = metrics.registry
    count = registry.get_sample_value("keel_event_loop_lag_seconds_count")
    within_50ms = registry.get_sample_value("keel_event_loop_lag_seconds_bucket", {"le": "0.05"})
    assert count is not None
    assert within_50ms is not None
    assert count - within_50ms >= 1, "the 60 ms block was not seen as a wake-up over 50 ms late"
