"""`keel layout migrate|rollback|drop|status`: the migrator over the configured database.

The migrator's store is not a serving node (it registers in no `storage_layout_nodes` row), and
it runs beside live Keel nodes, which follow the record it changes (keel.storage.layout_migration).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from keel.bootstrap.core import operator_store
from keel.config import Settings
from keel.storage.layout_migration import LayoutMigrator, Report
from keel.storage.migrator_lock import postgres_migrator_lock, sqlite_migrator_lock

T = TypeVar("T")

SQLITE_BATCH_PAUSE_S = 0.15
MIGRATOR_COMMAND_TIMEOUT_S = 600.0


async def with_migrator(
    settings: Settings,
    work: Callable[[LayoutMigrator], Awaitable[T]],
    *,
    batch: int = 500,
    rows_per_second: float | None = None,
    report: Callable[[Report], None] = lambda _: None,
    exclusive: bool = True,
) -> T:
    """`work` with a migrator over the configured database; `exclusive` (every command but
    `status`): holding the lock that keeps a second `keel layout` command out."""
    lock: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
    if exclusive:
        lock = (
            postgres_migrator_lock(settings.database_url)
            if settings.uses_postgres
            else sqlite_migrator_lock(settings.sqlite_path)
        )
    async with lock:
        return await _with_migrator(
            settings, work, batch=batch, rows_per_second=rows_per_second, report=report
        )


async def _with_migrator(
    settings: Settings,
    work: Callable[[LayoutMigrator], Awaitable[T]],
    *,
    batch: int,
    rows_per_second: float | None,
    report: Callable[[Report], None],
) -> T:
    # Statements of a migration (counts, deleting a layout in batches) may take longer than a
    # request's: a bound of minutes, not the serving node's seconds.
    settings = settings.model_copy(update={"db_command_timeout_seconds": MIGRATOR_COMMAND_TIMEOUT_S})
    async with operator_store(settings) as store:
        # SQLite: a pause between batches lets the serving nodes' writers in (see LayoutMigrator).
        pause_s = 0.0 if settings.uses_postgres else SQLITE_BATCH_PAUSE_S
        migrator = LayoutMigrator(
            store, batch=batch, rows_per_second=rows_per_second, pause_s=pause_s, report=report
        )
        return await work(migrator)
