"""One `keel layout` command at a time per database (migrate, rollback, drop).

Each step of a migration checks the layout record's generation, but batches of a backfill or a
verify do not change the record: two migrators would copy, mend and delete the same rows. So a
migrator holds a lock for its lifetime: a session advisory lock on PostgreSQL (released when
its connection closes, a kill -9 included), an exclusive `flock` of a file beside the SQLite
database (released by the kernel when the process ends).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path

_POSTGRES_KEY = 0x6B65656C  # "keel": the advisory lock's key


class MigratorBusy(RuntimeError):
    """Another `keel layout` command holds the lock."""


_BUSY = "Another `keel layout` command is running on this database; wait for it, or stop it first."


@contextlib.asynccontextmanager
async def postgres_migrator_lock(url: str) -> AsyncIterator[None]:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _POSTGRES_KEY):
            raise MigratorBusy(_BUSY)
        yield
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def sqlite_migrator_lock(database: Path) -> AsyncIterator[None]:
    with (database.parent / f"{database.name}.layout-lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigratorBusy(_BUSY) from None
        yield
