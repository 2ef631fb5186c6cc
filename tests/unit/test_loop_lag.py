from __future__ import annotations

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
