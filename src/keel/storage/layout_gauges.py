"""The layout record and a migration's progress as gauges, on every serving node.

A node reads the record and the migrator's progress row every `WATCH_SECONDS`, off the request
path (`watch_layout`, started by the composition root for a store that `ReadsLayout`), and sets:

- `keel_layout_phase{phase}`: 1 for the record's phase, 0 for the others;
- `keel_layout_reads{layout}`: 1 for the layout reads go to, 0 for the other;
- `keel_layout_generation`: the record's generation (counted up by every change of phase);
- `keel_layout_migration_done_profiles`, `keel_layout_migration_covered_profiles`,
  `keel_layout_migration_mended_profiles`: the backfill's or the verification's progress
  (profiles done, profiles the phase covers, profiles mended); 0 outside those phases.

The migrator is a command, not a server, so its progress is published by the nodes that are
scraped anyway (docs/operations.md has the ETA as a PromQL expression).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

import structlog

from keel.observability.metrics import Metrics
from keel.storage.layout_records import LayoutReading
from keel.storage.layouts import Layout, Phase

WATCH_SECONDS = 2.0
_PROGRESS_PHASES = frozenset({Phase.BACKFILL, Phase.VERIFY})


@runtime_checkable
class ReadsLayout(Protocol):
    """A store that can say what its layout record and the migration's progress are."""

    async def layout_reading(self) -> LayoutReading: ...


def publish(metrics: Metrics, reading: LayoutReading) -> None:
    record = reading.record
    for phase in Phase:
        metrics.layout_phase.labels(phase.value).set(1 if phase is record.phase else 0)
    reads = record.reads_from()
    for layout in Layout:
        metrics.layout_reads.labels(layout.value).set(1 if layout is reads else 0)
    metrics.layout_generation.set(record.generation)
    progress = reading.progress
    if progress is None or progress.phase is not record.phase or progress.phase not in _PROGRESS_PHASES:
        progress = None
    metrics.layout_migration_done.set(progress.done if progress else 0)
    metrics.layout_migration_covered.set(progress.total if progress else 0)
    metrics.layout_migration_mended.set(progress.mended if progress else 0)


async def watch_layout(store: ReadsLayout, metrics: Metrics, every_seconds: float = WATCH_SECONDS) -> None:
    """Publish the store's layout reading every `every_seconds`, until cancelled. A failed
    reading (the database away) is logged once, and its recovery once: the gauges keep the
    last reading meanwhile."""
    log = structlog.get_logger("keel.layout")
    failing = False
    while True:
        try:
            publish(metrics, await store.layout_reading())
        except Exception as error:  # noqa: BLE001 - a gauge's reader must outlive a database hiccup
            if not failing:
                log.warning("layout_reading_failed", error=type(error).__name__)
            failing = True
        else:
            if failing:
                log.info("layout_reading_recovered")
            failing = False
        await asyncio.sleep(every_seconds)
