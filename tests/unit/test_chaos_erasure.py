"""Negative controls for experiment 12 (erasure under kills): a value left in a table or in the
stream, an erasure not completed or completed late, a kill that came after the sagas finished,
scans that cannot see a kept profile, each fail experiment 12's own checks; a clean run passes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from chaos.erasure import hits, values_of, victim
from chaos.measures import Run, evaluate_probe
from chaos.runner import EXPERIMENTS

SPEC: dict[str, Any] = json.loads(next(EXPERIMENTS.glob("12-*.json")).read_text())
CLEAN = {
    "erasures_completed": 3.0,
    "erasure_completed_seconds": 4.0,
    "erasures_running_at_check": 3.0,
    "erased_values_in_stream_before": 8.0,
    "erased_values_in_tables": 0.0,
    "erased_values_in_stream": 0.0,
    "kept_values_in_tables": 4.0,
    "kept_values_in_stream": 4.0,
    "history_violations": 0.0,
    "acknowledged_writes": 200.0,
}


def passes(name_part: str, **changed: float) -> bool:
    run = Run(started=0.0, ended=30.0, time_scale=0.5)
    run.values.update(CLEAN | changed)
    probes = [p for p in SPEC["checks"] if name_part in p["name"]]
    assert len(probes) == 1, name_part
    return evaluate_probe(probes[0], run).passed


@pytest.mark.parametrize(
    ("check_name", "key", "bad"),
    [
        ("erasures completed", "erasures_completed", 2),
        ("until every erasure completed", "erasure_completed_seconds", math.inf),
        ("until every erasure completed", "erasure_completed_seconds", 16),
        ("still running at the second kill", "erasures_running_at_check", 0),
        ("in the stream before", "erased_values_in_stream_before", 2),
        ("found in any table after", "erased_values_in_tables", 1),
        ("found in the NATS stream after", "erased_values_in_stream", 1),
        ("found in the tables (the scan", "kept_values_in_tables", 0),
        ("found in the stream (the scan", "kept_values_in_stream", 0),
    ],
)
def test_each_defect_fails_its_check_and_the_clean_run_passes_it(
    check_name: str, key: str, bad: float
) -> None:
    assert passes(check_name)
    assert not passes(check_name, **{key: bad})


def test_a_value_counts_once_per_place_it_appears_in_whatever_case() -> None:
    values = values_of(victim(0, "t0k"))
    texts = {"profiles": json.dumps(victim(0, "t0k")), "other": "ZQV0.T0K@EXAMPLE.ORG", "clean": "nothing"}
    assert hits(texts, values) == len(values) + 1
    assert hits({"clean": "nothing"}, values) == 0
