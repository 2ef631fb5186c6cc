"""Migrations over a database that already holds keys, on SQLite and PostgreSQL: 0001 -> 0002
(every key and every column of it kept, each key on the standard plan), 0002 -> 0001 (keys kept,
`plan` gone, the table as 0001 made it; on SQLite this is alembic's batch rebuild of `api_keys`:
copied to a new table, the old one dropped, the new one renamed; the upgrade is an ALTER TABLE
ADD COLUMN), and 0003's downgrade, which refuses by design and must leave the database exactly
as it was. 0002 -> 0003 itself: test_key_verifier_migration.py."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import Authenticator, issue_api_key, token_digest
from keel.service.clock import SystemClock
from keel.storage.migrations.runner import downgrade, migrate
from tests.integration.conftest import observer
from tests.integration.test_key_verifier_migration import _fresh_postgres_database

KINDS = ["sqlite", "postgres"]
# Tokens in Keel's format (keel_<16-char id>_<secret>); what 0001 stored is their SHA-256.
TOKENS = {
    "aaaaaaaaaaaaaaaa": "keel_aaaaaaaaaaaaaaaa_" + "a" * 43,
    "bbbbbbbbbbbbbbbb": "keel_bbbbbbbbbbbbbbbb_" + "b" * 43,
}
CREATED = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
REVOKED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


async def database(kind: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    return await _fresh_postgres_database(request.getfixturevalue("postgres_url"), name)


async def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows as dicts, from SQL written with PostgreSQL's $n placeholders."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.row_factory = sqlite3.Row
            cursor = connection.execute(re.sub(r"\$\d+", "?", sql), args)
            return [dict(row) for row in cursor.fetchall()]
    postgres = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await postgres.fetch(sql, *args)]
    finally:
        await postgres.close()


async def keys_stored_at_0001(url: str) -> None:
    sqlite = url.startswith("sqlite")
    for key_id, token in TOKENS.items():
        revoked = REVOKED if key_id.startswith("b") else None
        await query(
            url,
            "INSERT INTO api_keys (id, secret_hash, scopes, api_version, name, created_at, revoked_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            key_id,
            token_digest(token),
            "profiles:read profiles:write",
            "2026-11-28",
            f"key {key_id[0]}",
            CREATED.isoformat() if sqlite else CREATED,
            (revoked.isoformat() if sqlite else revoked) if revoked else None,
        )


async def api_keys(url: str) -> list[dict[str, Any]]:
    return await query(url, "SELECT * FROM api_keys ORDER BY id")


async def api_keys_columns(url: str) -> list[dict[str, Any]]:
    if url.startswith("sqlite"):
        return await query(
            url, "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('api_keys')"
        )
    return await query(
        url,
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'api_keys' ORDER BY ordinal_position",
    )


async def revision(url: str) -> str:
    rows = await query(url, "SELECT version_num FROM alembic_version")
    return str(rows[0]["version_num"])


async def everything(url: str) -> dict[str, Any]:
    """The schema (tables, columns, indexes) and every row of every table."""
    if url.startswith("sqlite"):
        schema = await query(url, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        tables = [row["name"] for row in schema if row["type"] == "table"]
    else:
        columns = await query(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position",
        )
        indexes = await query(
            url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        )
        schema = columns + indexes
        tables = sorted({row["table_name"] for row in columns})
    assert "api_keys" in tables
    assert "alembic_version" in tables
    rows = {table: await query(url, f"SELECT * FROM {table} ORDER BY 1") for table in tables}  # noqa: S608 - names from the catalog
    return {"schema": schema, "rows": rows}


@pytest.mark.parametrize("kind", KINDS)
async def test_0001_to_0002_and_back_keeps_every_key(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0002")
    await asyncio.to_thread(migrate, url, "0001")
    await keys_stored_at_0001(url)
    at_0001 = await api_keys(url)
    columns_at_0001 = await api_keys_columns(url)
    assert len(at_0001) == 2
    assert "plan" not in at_0001[0]

    await asyncio.to_thread(migrate, url, "0002")
    assert await revision(url) == "0002"
    at_0002 = await api_keys(url)
    # Every column of every key as it was, and each key on the standard plan.
    assert at_0002 == [{**row, "plan": "standard"} for row in at_0001]

    await asyncio.to_thread(downgrade, url, "0001")
    assert await revision(url) == "0001"
    assert await api_keys(url) == at_0001
    assert await api_keys_columns(url) == columns_at_0001

    # And up to the head: a key stored at 0001 authenticates; the revoked one does not.
    await asyncio.to_thread(migrate, url)
    store = await open_store(Settings(database_url=url), observer("test"))
    try:
        principal = await Authenticator(store).authenticate(TOKENS["aaaaaaaaaaaaaaaa"])
        assert principal.key_id == "aaaaaaaaaaaaaaaa"
        assert principal.scopes == {Scope.PROFILES_READ, Scope.PROFILES_WRITE}
        async with store.unit_of_work(read_only=True) as uow:
            revoked = await uow.api_keys.get("bbbbbbbbbbbbbbbb")
        assert revoked is not None
        assert revoked.revoked_at == REVOKED
    finally:
        await store.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_0003_downgrade_refuses_and_leaves_the_database_as_it_was(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0003_down")
    await asyncio.to_thread(migrate, url)
    store = await open_store(Settings(database_url=url), observer("test"))
    try:
        issued = await issue_api_key(
            store, SystemClock(), scopes=[Scope.PROFILES_READ], api_version="2026-11-28", name="kept"
        )
    finally:
        await store.close()
    # 0006, 0005 and 0004 (lifecycle, webhooks, event outbox) go back as they should; 0003 below
    # them refuses.
    await asyncio.to_thread(downgrade, url, "0003")
    before = await everything(url)
    assert await revision(url) == "0003"

    for target in ("0002", "0001"):
        with pytest.raises(RuntimeError, match=r"0003 cannot be downgraded.*Restore a backup"):
            await asyncio.to_thread(downgrade, url, target)

    assert await everything(url) == before
    # Migrated up again (this code reads the columns of later revisions), the key still works.
    await asyncio.to_thread(migrate, url)
    store = await open_store(Settings(database_url=url), observer("test"))
    try:
        principal = await Authenticator(store).authenticate(issued.token)
        assert principal.key_id == issued.key.id
    finally:
        await store.close()
