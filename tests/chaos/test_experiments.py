"""Every chaos experiment, run for real in the test suite with its phases shortened
(`TIME_SCALE`, about half: the twelve add roughly 6 minutes), so a change that breaks a claim in
chaos/experiments fails `./scripts/test.sh` and not only a manual `./scripts/chaos.sh`. Each
also checks that no server the experiment started outlives it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from chaos.runner import EXPERIMENTS, run_experiment

TIME_SCALE = float(os.environ.get("KEEL_CHAOS_TIME_SCALE", "0.5"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


SPECS = {path.stem: json.loads(path.read_text()) for path in sorted(EXPERIMENTS.glob("*.json"))}


@pytest.mark.parametrize("name", SPECS)
async def test_experiment(name: str) -> None:
    started: list[int] = []
    passed, results, details = await run_experiment(SPECS[name], time_scale=TIME_SCALE, spawned=started)
    report = "\n".join([*(r.line() for r in results), *details.values()])
    print(report)
    assert passed, report
    assert started, "the system reported no server processes"
    assert not [pid for pid in started if _alive(pid)], "a server outlived its experiment"
