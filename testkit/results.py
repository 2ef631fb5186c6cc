"""Where measured figures are written: docs/performance/<date>-<name>.md, one new file per run.
Benchmarks and chaos experiments both write there, so a new figure is a new file and an earlier
one is never edited or overwritten."""

from __future__ import annotations

import datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "performance"


def new_result_path(name: str) -> Path:
    """docs/performance/<today>-<name>.md, or with a suffix (-2, -3, ...) when a run the same
    day took it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path = RESULTS / f"{today}-{name}.md"
    number = 2
    while path.exists():
        path = RESULTS / f"{today}-{name}-{number}.md"
        number += 1
    return path
