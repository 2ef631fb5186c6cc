"""The negative control of the experiments' `/healthz` checks, on real servers: Keel stopped
(SIGSTOP) for half a second four times during the fault phase, which to its clients is an event
loop blocked for that long, must fail the experiments' own `/healthz` p99 check (taken from
03-blackhole-postgres.json), and Keel's own event-loop lag must show it too, while the same run's
fault-free steady phase passes. A check that a blocked loop cannot fail would be no check."""

from __future__ import annotations

import json
from typing import Any

from chaos.runner import EXPERIMENTS, run_experiment

from tests.chaos.test_experiments import _alive

PAUSE_SECONDS = 0.5  # not scaled: the control is run at full length so the block dwarfs the noise


def _probe(experiment: str, name_part: str) -> dict[str, Any]:
    spec = json.loads(next(EXPERIMENTS.glob(f"{experiment}-*.json")).read_text())
    probes = [*spec["steady-state-hypothesis"]["probes"], *spec["checks"]]
    (found,) = [p for p in probes if name_part in p["name"]]
    return dict(found)


def _blocking_spec() -> dict[str, Any]:
    pause = {"target": "keel", "action": "pause", "pauses": {"before": 0.1}}
    resume = {"target": "keel", "action": "resume", "pauses": {"before": PAUSE_SECONDS}}
    method: list[dict[str, Any]] = []
    for _ in range(4):
        method += [dict(pause), dict(resume)]
    method[0] = {**method[0], "pauses": {"before": 3}, "phase": "fault"}
    method.append({"target": "keel", "action": "resume", "phase": "recovery"})
    lag = {
        "name": "Keel's event-loop lag p99 during the fault (ms; ≤ 4 x its fault-free baseline p99)",
        "measure": "keel_loop_lag_ms",
        "where": {"phase": "fault"},
        "tolerance": {"max_times_baseline": 4},
    }
    return {
        "title": "negative control: Keel's event loop blocked 4 x 0.5 s",
        "system": {"keel": {"KEEL_RATELIMIT_ENABLED": "false"}},
        "steady-state-hypothesis": {"probes": [_probe("01", "/healthz polls that failed")]},
        "method": method,
        "tail_seconds": 1,
        "checks": [_probe("03", "/healthz p99"), lag],
        "rollbacks": [{"target": "keel", "action": "resume"}],
    }


async def test_a_blocked_event_loop_fails_the_healthz_p99_check_and_shows_in_keels_loop_lag() -> None:
    started: list[int] = []
    passed, results, details = await run_experiment(_blocking_spec(), time_scale=1.0, spawned=started)
    report = "\n".join([*(r.line() for r in results), *details.values()])
    print(report)
    verdicts = {r.name.split(" (")[0]: r for r in results}
    assert not passed, report
    assert verdicts["/healthz polls that failed before the first kill"].passed, report
    assert not verdicts["/healthz p99 during the fault"].passed, report
    assert not verdicts["Keel's event-loop lag p99 during the fault"].passed, report
    # Each poll caught by a block waited it out: the blocked poll is the slowest seen.
    assert verdicts["/healthz p99 during the fault"].value >= PAUSE_SECONDS * 1000 / 2, report
    assert not [pid for pid in started if _alive(pid)], "a process outlived the control"
