"""The layout of profiles is chosen by configuration and recorded in the database: profiles land
in the recorded layout's tables, a node configured for the other layout refuses to start,
`keel migrate` records the configured layout only while the database holds no profile, and the
document layout's filters are index-backed, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery
from testkit.history import FinalProfile
from testkit.workload import final_state
from typer.testing import CliRunner

from keel.bootstrap.core import open_store
from keel.cli import app
from keel.config import Settings
from keel.domain.profile import Profile
from keel.service.ports import ProfileQuery, Store
from keel.storage.layouts import Layout, LayoutMismatch
from keel.storage.migrations.runner import downgrade, migrate
from keel.storage.sqlite.store import SqliteStore
from tests.integration.conftest import observer, truncate
from tests.integration.test_migrations_up_and_down import database, everything, query
from tests.integration.test_repository_contract import NOW, add, make_profile

LAYOUTS = ["normalized", "document"]


async def counts(url: str) -> dict[str, int]:
    tables = ("profiles", "profile_emails", "profile_documents", "profile_document_emails")
    return {table: (await query(url, f"SELECT count(*) AS n FROM {table}"))[0]["n"] for table in tables}  # noqa: S608 - constant names


async def recorded_layout(url: str) -> str:
    rows = await query(url, "SELECT read_layout FROM storage_layout WHERE name = 'profiles'")
    layout: str = rows[0]["read_layout"]
    return layout


async def store_a_profile(url: str, layout: str = "normalized") -> None:
    """One profile written through a store configured for `layout`."""
    store = await open_store(Settings(database_url=url, storage_layout=layout), observer("test"))
    try:
        await add(store, make_profile())
    finally:
        await store.close()


async def store_a_profile_before_the_record(url: str) -> None:
    """One profile in the normalized tables of a database below 0008 (no layout record to follow)."""
    store = await open_store(Settings(database_url=url), observer("test"))
    try:
        async with store.unit_of_work() as unit:
            # The layout's own repository: the unit's `profiles` would follow a record not there yet.
            await unit.profile_layouts[Layout.NORMALIZED].add(make_profile())  # type: ignore[attr-defined]
            await unit.commit()
    finally:
        await store.close()


async def set_record(url: str, layout: str) -> None:
    await query(url, "UPDATE storage_layout SET read_layout = $1 WHERE name = 'profiles'", layout)


@pytest.fixture(params=LAYOUTS)
def storage_layout(request: pytest.FixtureRequest) -> str:
    layout: str = request.param
    return layout


async def test_profiles_are_kept_in_the_recorded_layouts_tables(
    store: Store, database_url: str, storage_layout: str
) -> None:
    profile = make_profile()
    await add(store, profile)
    assert await recorded_layout(database_url) == storage_layout
    if storage_layout == "document":
        expected = {"profiles": 0, "profile_emails": 0, "profile_documents": 1, "profile_document_emails": 2}
    else:
        expected = {"profiles": 1, "profile_emails": 2, "profile_documents": 0, "profile_document_emails": 0}
    assert await counts(database_url) == expected
    async with store.unit_of_work() as uow:
        await uow.profiles.update(profile.delete(NOW), expected_version=1)
        await uow.commit()
    if storage_layout == "document":
        # A deleted profile's addresses leave the side table: they are free for others.
        assert (await counts(database_url))["profile_document_emails"] == 0


async def test_the_history_checker_reads_the_recorded_layout(store: Store, database_url: str) -> None:
    """The workload's final state (testkit) comes from the tables profiles are read from."""
    kept, deleted = make_profile(), make_profile(handle="gone", email="gone@example.com")
    await add(store, kept)
    await add(store, deleted)
    async with store.unit_of_work() as uow:
        await uow.profiles.update(deleted.delete(NOW), expected_version=1)
        await uow.commit()
    assert await final_state(database_url) == {
        kept.id: FinalProfile(kept.id, 1, False, kept.fields.attributes),
        deleted.id: FinalProfile(deleted.id, 2, True, deleted.fields.attributes),
    }


async def test_a_node_configured_for_the_other_layout_refuses_to_start(
    database_url: str, storage_layout: str
) -> None:
    if database_url.startswith("postgresql"):
        await truncate(database_url, storage_layout)
    other = "normalized" if storage_layout == "document" else "document"
    with pytest.raises(LayoutMismatch, match=f"in the {storage_layout} layout.*configured for {other}"):
        await open_store(Settings(database_url=database_url, storage_layout=other), observer("test"))


async def test_migrate_records_the_configured_layout_only_when_it_creates_the_record(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    await asyncio.to_thread(migrate, url, layout="document")
    assert await recorded_layout(url) == "document"
    # A later run with another setting (a default one, from a CI job) never moves the record,
    # even before the first profile: document nodes may already serve it.
    with pytest.raises(LayoutMismatch, match="only when it creates"):
        await asyncio.to_thread(migrate, url, layout="normalized")
    assert await recorded_layout(url) == "document"
    await store_a_profile(url, "document")
    with pytest.raises(LayoutMismatch, match="keeps its profiles in the document layout"):
        await asyncio.to_thread(migrate, url, layout="normalized")
    assert await recorded_layout(url) == "document"
    # Below 0008 the document tables would be dropped with the only copy of the profiles.
    with pytest.raises(RuntimeError, match="would drop them"):
        await asyncio.to_thread(downgrade, url, "0007")
    assert await counts(url) == {
        "profiles": 0,
        "profile_emails": 0,
        "profile_documents": 1,
        "profile_document_emails": 2,
    }


async def test_a_database_with_profiles_is_not_recorded_as_the_other_layout_on_its_upgrade(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    await asyncio.to_thread(migrate, url, "0007")
    await store_a_profile_before_the_record(url)
    with pytest.raises(LayoutMismatch, match="holds profiles"):
        await asyncio.to_thread(migrate, url, layout="document")
    assert await recorded_layout(url) == "normalized"


async def test_0008_down_refuses_while_document_rows_exist_whatever_the_record_says(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    await asyncio.to_thread(migrate, url, layout="document")
    await store_a_profile(url, "document")
    await set_record(url, "normalized")  # a record that went wrong
    with pytest.raises(RuntimeError, match="profile_documents holds profiles"):
        await asyncio.to_thread(downgrade, url, "0007")
    assert (await counts(url))["profile_documents"] == 1


async def test_a_record_this_keel_cannot_read_is_refused_with_a_sentence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    await asyncio.to_thread(migrate, url)
    await query(url, "UPDATE storage_layout SET phase = 'reshard', target_layout = 'document'")
    with pytest.raises(LayoutMismatch, match=r"phase 'reshard'.*does not know"):
        await open_store(Settings(database_url=url), observer("test"))
    status = await asyncio.to_thread(
        CliRunner().invoke, app, ["layout", "status"], env={"KEEL_DATABASE_URL": url}
    )
    assert status.exit_code == 1
    assert "does not know" in status.output
    assert "Traceback" not in status.output
    await query(url, "DELETE FROM storage_layout")  # past 0008, and no record: no node may guess
    with pytest.raises(LayoutMismatch, match="no layout record"):
        await open_store(Settings(database_url=url, storage_layout="document"), observer("test"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_0008_up_and_down_leaves_a_normalized_database_as_it_was(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0008")
    await asyncio.to_thread(migrate, url, "0007")
    await store_a_profile_before_the_record(url)
    before = await everything(url)
    await asyncio.to_thread(migrate, url, "0008")
    upgraded = await everything(url)
    assert set(upgraded["rows"]) - set(before["rows"]) == {
        "profile_documents",
        "profile_document_emails",
        "storage_layout",
    }
    assert upgraded["rows"]["storage_layout"] == [
        {"name": "profiles", "read_layout": "normalized", "phase": "steady", "target_layout": None}
    ]
    await asyncio.to_thread(downgrade, url, "0007")
    assert await everything(url) == before


async def test_keel_migrate_says_why_it_cannot_record_the_configured_layout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    runner = CliRunner()
    recorded = await asyncio.to_thread(
        runner.invoke, app, ["migrate"], env={"KEEL_DATABASE_URL": url, "KEEL_STORAGE_LAYOUT": "document"}
    )
    assert recorded.exit_code == 0, recorded.output
    assert await recorded_layout(url) == "document"
    await store_a_profile(url, "document")
    refused = await asyncio.to_thread(
        runner.invoke, app, ["migrate"], env={"KEEL_DATABASE_URL": url, "KEEL_STORAGE_LAYOUT": "normalized"}
    )
    assert refused.exit_code == 1
    assert "keeps its profiles in the document layout" in refused.output
    assert await recorded_layout(url) == "document"
    # `keel layout status` tells a node configured otherwise what the database records.
    normalized_node = {"KEEL_DATABASE_URL": url, "KEEL_STORAGE_LAYOUT": "normalized"}
    status = await asyncio.to_thread(runner.invoke, app, ["layout", "status"], env=normalized_node)
    assert status.exit_code == 0, status.output
    assert status.stdout.splitlines() == [
        "read layout: document",
        "phase: steady",
        "target layout: -",
        "generation: 0",
        "reads: document; writes: document",
        "stored: normalized 0, document 1",
        "this node (KEEL_STORAGE_LAYOUT): normalized",
    ]


def _filters(profile: Profile) -> dict[str, ProfileQuery]:
    return {
        "id": ProfileQuery(limit=1, ids=(profile.id,)),
        "handle": ProfileQuery(limit=1, handle=profile.handle),
        "email": ProfileQuery(limit=1, email=profile.fields.emails[0].normalized),
        "page": ProfileQuery(limit=1, after_id=profile.id),
    }


# Per filter, the index search each database must plan (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's
# EXPLAIN: the index scan and the condition it serves).
INDEX_SEARCHES = {
    "sqlite": {
        "id": r"SEARCH p USING INDEX sqlite_autoindex_profile_documents_1 \(id=\?\)",
        "handle": r"SEARCH p USING INDEX ux_profile_documents_live_handle \(<expr>=\?\)",
        "email": r"SEARCH profile_document_emails USING INDEX sqlite_autoindex_profile_document_emails_1"
        r" \(address_normalized=\?\)",
        "page": r"SEARCH p USING INDEX sqlite_autoindex_profile_documents_1 \(id>\?\)",
    },
    "postgres": {
        "id": r"Index Scan using profile_documents_pkey .*\n\s+Index Cond: \(id = ANY",
        "handle": r"Index Scan using ux_profile_documents_live_handle .*\n"
        r"\s+Index Cond: \(\(document ->> 'handle'",
        "email": r"Index Scan using ux_profile_document_emails_address .*\n"
        r"\s+Index Cond: \(address_normalized =",
        "page": r"Index Scan using profile_documents_pkey .*\n\s+Index Cond: \(id >",
    },
}


@pytest.mark.parametrize("storage_layout", ["document"])
async def test_the_document_layouts_filters_are_index_backed(store: Store, database_url: str) -> None:
    """Every statement `find` runs is planned as an index search on its filter, never a scan of
    the documents. On PostgreSQL with sequential scans priced out: over the few hundred rows here
    the planner may rightly prefer one; docs/layouts.md shows the plans over thousands of rows."""
    async with store.unit_of_work() as uow:
        for n in range(300):
            await uow.profiles.add(make_profile(handle=f"user_{n}", email=f"u{n}@example.com"))
        await uow.commit()
    profile = make_profile()
    await add(store, profile)
    if database_url.startswith("postgresql"):
        await query(database_url, "ANALYZE profile_documents, profile_document_emails")
    searches = INDEX_SEARCHES["sqlite" if database_url.startswith("sqlite") else "postgres"]
    for name, filter_ in _filters(profile).items():
        statements = await _statements_of_find(store, filter_)
        assert len(statements) == 1, (name, statements)
        plan = await _plan(database_url, *statements[0])
        assert re.search(searches[name], plan), (name, plan)
        assert not re.search(r"Seq Scan|\bSCAN\b", plan), (name, plan)


@pytest.mark.parametrize("storage_layout", ["document"])
async def test_the_plan_check_tells_a_scan_from_an_index_search(store: Store, database_url: str) -> None:
    """The negative control of the test above: with the handle's index dropped (in a transaction
    rolled back at once), the same statement's plan fails the same checks."""
    profile = make_profile()
    await add(store, profile)
    (statement,) = await _statements_of_find(store, _filters(profile)["handle"])
    searches = INDEX_SEARCHES["sqlite" if database_url.startswith("sqlite") else "postgres"]
    with_index = await _plan(database_url, *statement)
    without_index = await _plan(database_url, *statement, dropped_index="ux_profile_documents_live_handle")
    assert re.search(searches["handle"], with_index), with_index
    assert not re.search(searches["handle"], without_index), without_index
    # Read row by row, the handle checked on each: a scan (SQLite; PostgreSQL when allowed) or,
    # with sequential scans priced out, PostgreSQL's walk of the primary key filtering on it.
    assert re.search(r"Seq Scan|\bSCAN\b|Filter: .*'handle'", without_index), without_index


async def _statements_of_find(store: Store, filter_: ProfileQuery) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements the repository's `find` sends, as the driver sees them."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    async with store.unit_of_work(read_only=True) as uow:
        connection = uow._connection  # type: ignore[attr-defined]  # the adapters' own connection
        if isinstance(store, SqliteStore):
            # The statement text with its parameters expanded in it.
            await connection.set_trace_callback(lambda sql: statements.append((sql, ())))
            try:
                await uow.profiles.find(filter_)
            finally:
                await connection.set_trace_callback(None)
        else:

            def logged(query: LoggedQuery) -> None:
                statements.append((query.query, tuple(query.args)))

            with connection.query_logger(logged):
                await uow.profiles.find(filter_)
    # The unit's reading of the layout record (when its copy is due) is not the find's.
    return [(sql, args) for sql, args in statements if "storage_layout" not in sql]


async def _plan(url: str, sql: str, args: tuple[Any, ...], *, dropped_index: str | None = None) -> str:
    """The statement's plan; with `dropped_index`, as planned without that index (dropped in a
    transaction that is rolled back: both databases' DDL is transactional)."""
    if url.startswith("sqlite"):
        with contextlib.closing(
            sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        ) as sqlite:
            sqlite.execute("BEGIN")
            try:
                if dropped_index is not None:
                    sqlite.execute(f"DROP INDEX {dropped_index}")
                rows = sqlite.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            finally:
                sqlite.execute("ROLLBACK")
        return "\n".join(str(row[3]) for row in rows)
    connection = await asyncpg.connect(url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute("SET LOCAL enable_seqscan = off")
            # Never wait on a connection of the store holding the table: fail instead.
            await connection.execute("SET LOCAL lock_timeout = '5s'")
            if dropped_index is not None:
                await connection.execute(f"DROP INDEX {dropped_index}")
            lines = [str(row[0]) for row in await connection.fetch("EXPLAIN " + sql, *args)]
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    return "\n".join(lines)
