"""The SQLite store's shared reader (keel.storage.sqlite.connection): a read never runs inside the
snapshot of another unit's unfinished statement, so it sees every write acknowledged before it
began. Also the SQLite behaviour that makes this needed, pinned, so a change in it is seen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.storage.migrations.runner import migrate
from keel.storage.sqlite.store import SqliteStore
from tests.conftest import environment_layout
from tests.integration.conftest import observer
from tests.integration.test_repository_contract import make_profile


async def test_a_read_sees_a_write_acknowledged_while_another_units_statement_is_unfinished(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    await asyncio.to_thread(migrate, url, layout=environment_layout())
    store = await open_store(Settings(database_url=url), observer("test"))
    assert isinstance(store, SqliteStore)
    try:
        # Another request's read, begun and not yet finished (its rows not all fetched).
        async with (
            store.unit_of_work(read_only=True) as other,
            other.connection.execute("SELECT name FROM storage_layout") as rows,
        ):
            profile = make_profile()
            async with store.unit_of_work() as unit:
                await unit.profiles.add(profile)
                await unit.commit()
            async with store.unit_of_work(read_only=True) as unit:
                seen = await unit.profiles.get(profile.id)
            assert seen is not None
            assert seen.version == profile.version
            assert [tuple(row) for row in await rows.fetchall()] == [("profiles",)]
    finally:
        await store.close()


async def test_sqlite_shares_an_unfinished_statements_snapshot_with_the_next_statement(
    tmp_path: Path,
) -> None:
    """Why the reader reads each statement whole: on one connection, a statement run while
    another is unfinished reads that one's snapshot, older than a commit made in between."""
    path = tmp_path / "plain.sqlite3"
    writer = await aiosqlite.connect(path, isolation_level=None)
    reader = await aiosqlite.connect(path, isolation_level=None)
    try:
        await writer.execute("PRAGMA journal_mode=WAL")
        await writer.execute("CREATE TABLE t (id INTEGER)")
        await writer.execute("INSERT INTO t VALUES (1)")
        async with reader.execute("SELECT id FROM t") as unfinished:
            await writer.execute("INSERT INTO t VALUES (2)")
            assert list(await reader.execute_fetchall("SELECT id FROM t WHERE id = 2")) == []
            assert [tuple(r) for r in await unfinished.fetchall()] == [(1,)]
        assert [tuple(r) for r in await reader.execute_fetchall("SELECT id FROM t WHERE id = 2")] == [(2,)]
    finally:
        await reader.close()
        await writer.close()
