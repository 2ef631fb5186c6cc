"""The layout gauges (keel.storage.layout_gauges) over a real database, on SQLite and
PostgreSQL: what a serving node's store reads of the record and the migrator's progress, through
a migration stopped in its backfill and taken on to the switch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keel.bootstrap.core import open_store
from keel.bootstrap.layout import with_migrator
from keel.config import Settings
from keel.observability.metrics import Metrics
from keel.storage.layout_gauges import ReadsLayout, publish
from keel.storage.layout_migration import Report
from keel.storage.layouts import Layout, Phase
from keel.storage.migrations.runner import migrate
from tests.integration.conftest import observer
from tests.integration.test_layout_migration import seed
from tests.integration.test_migrations_up_and_down import database


class Stop(Exception):
    """Raised by the migrator's report after its first batch: the migrator stops there."""


def gauges(metrics: Metrics) -> dict[str, float | str | None]:
    value = metrics.registry.get_sample_value
    return {
        "phase": next(
            (phase.value for phase in Phase if value("keel_layout_phase", {"phase": phase.value}) == 1),
            None,
        ),
        "reads": next(
            (layout.value for layout in Layout if value("keel_layout_reads", {"layout": layout.value}) == 1),
            None,
        ),
        "generation": value("keel_layout_generation"),
        "done": value("keel_layout_migration_done_profiles"),
        "covered": value("keel_layout_migration_covered_profiles"),
        "mended": value("keel_layout_migration_mended_profiles"),
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_gauges_follow_a_migration(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_layout_gauges")
    await asyncio.to_thread(migrate, url, layout="normalized")
    settings = Settings(database_url=url, storage_layout="normalized")
    node = await open_store(settings, observer("node"))
    try:
        assert isinstance(node, ReadsLayout)
        await seed(node, 12)
        metrics = Metrics()
        publish(metrics, await node.layout_reading())
        steady = {"phase": "steady", "reads": "normalized", "done": 0, "covered": 0, "mended": 0}
        assert gauges(metrics) == {**steady, "generation": 0}

        def stop_after_a_batch(report: Report) -> None:
            if report.progress is not None and report.progress.done > 0:
                raise Stop

        with pytest.raises(Stop):
            await with_migrator(
                settings, lambda m: m.migrate(Layout.DOCUMENT), batch=5, report=stop_after_a_batch
            )
        publish(metrics, await node.layout_reading())
        # steady -> dual_write -> backfill: two changes; one batch of 5 out of 12 copied.
        assert gauges(metrics) == {
            "phase": "backfill",
            "reads": "normalized",
            "generation": 2,
            "done": 5,
            "covered": 12,
            "mended": 0,
        }

        await with_migrator(settings, lambda m: m.migrate(Layout.DOCUMENT, until=Phase.SWITCHED), batch=5)
        publish(metrics, await node.layout_reading())
        # backfill -> verify -> switched; no progress is published outside backfill and verify.
        assert gauges(metrics) == {
            "phase": "switched",
            "reads": "document",
            "generation": 4,
            "done": 0,
            "covered": 0,
            "mended": 0,
        }
    finally:
        await node.close()
