"""`watch_layout`: publishes every reading, outlives a failed one (logged once, and its
recovery once), and keeps the last gauges meanwhile."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from keel.observability.metrics import Metrics
from keel.storage.layout_gauges import watch_layout
from keel.storage.layout_records import LayoutReading, Progress
from keel.storage.layouts import Layout, LayoutRecord, Phase


class Readings:
    """Hands out `script` one step per call (an exception is raised), then cancels the watch."""

    def __init__(self, script: list[LayoutReading | Exception]) -> None:
        self.script = list(script)
        self.calls = 0

    async def layout_reading(self) -> LayoutReading:
        self.calls += 1
        if not self.script:
            raise asyncio.CancelledError
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


BACKFILL = LayoutReading(
    LayoutRecord(Layout.NORMALIZED, Phase.BACKFILL, Layout.DOCUMENT, 2),
    Progress(Phase.BACKFILL, "eu1_x", "eu1_z", 40, 100, 0),
)


async def test_a_failed_reading_is_logged_once_and_the_last_gauges_stay() -> None:
    metrics = Metrics()
    source = Readings([BACKFILL, OSError("down"), OSError("still down"), BACKFILL])
    done = metrics.registry.get_sample_value
    with structlog.testing.capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await watch_layout(source, metrics, every_seconds=0)
    assert source.calls == 5
    assert done("keel_layout_migration_done_profiles") == 40
    assert done("keel_layout_phase", {"phase": "backfill"}) == 1
    assert [(entry["event"], entry.get("error")) for entry in logs] == [
        ("layout_reading_failed", "OSError"),
        ("layout_reading_recovered", None),
    ]


async def test_progress_of_another_phase_is_not_published() -> None:
    """The progress row of a finished migration (a marker, phase steady) or of a phase the record
    has left is not a migration's progress."""
    metrics = Metrics()
    stale = LayoutReading(
        LayoutRecord(Layout.NORMALIZED, Phase.VERIFY, Layout.DOCUMENT, 3),
        Progress(Phase.BACKFILL, "eu1_x", "eu1_z", 40, 100, 0),
    )
    with pytest.raises(asyncio.CancelledError):
        await watch_layout(Readings([BACKFILL, stale]), metrics, every_seconds=0)
    assert metrics.registry.get_sample_value("keel_layout_migration_done_profiles") == 0
    assert metrics.registry.get_sample_value("keel_layout_phase", {"phase": "verify"}) == 1
    assert metrics.registry.get_sample_value("keel_layout_phase", {"phase": "backfill"}) == 0
