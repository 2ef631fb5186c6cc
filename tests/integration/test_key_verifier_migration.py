"""Migration 0003 (issue 13): keys stored before it, as the SHA-256 of their token, keep working
after it, and what it leaves stored no longer authenticates; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.domain.errors import Unauthenticated
from keel.service.auth import Authenticator, issue_api_key, token_digest
from keel.service.clock import SystemClock
from keel.storage.migrations.runner import migrate
from tests.fakes import InMemoryStore
from tests.integration.conftest import observer


async def _a_key_stored_the_old_way(url: str) -> str:
    """A key as revision 0002 stored it: its token's SHA-256 as the stored hash. Issued in
    memory and written with SQL, since today's code writes a schema 0002 does not have."""
    issued = await issue_api_key(
        InMemoryStore(), SystemClock(), scopes=[Scope.PROFILES_READ], api_version="2026-11-28", name="old"
    )
    key = issued.key
    values = (key.id, token_digest(issued.token), "profiles:read", key.api_version, key.name, key.plan)
    sql = (
        "INSERT INTO api_keys (id, secret_hash, scopes, api_version, name, plan, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as database:
            database.execute(re.sub(r"\$\d", "?", sql), (*values, key.created_at.isoformat()))
    else:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(sql, *values, key.created_at)
        finally:
            await connection.close()
    return issued.token


async def _fresh_postgres_database(server_url: str, name: str) -> str:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_keys_of_before_0003_keep_working_and_the_old_hash_stops(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    else:
        url = await _fresh_postgres_database(request.getfixturevalue("postgres_url"), "keel_migration_0003")
    await asyncio.to_thread(migrate, url, "0002")
    token = await _a_key_stored_the_old_way(url)
    await asyncio.to_thread(migrate, url)
    store = await open_store(Settings(database_url=url), observer("test"))
    try:
        principal = await Authenticator(store).authenticate(token)
        assert principal.scopes == {Scope.PROFILES_READ}
        async with store.unit_of_work(read_only=True) as uow:
            stored = await uow.api_keys.get(principal.key_id)
        assert stored is not None
        assert stored.secret_hash != token_digest(token)
        with pytest.raises(Unauthenticated):
            await Authenticator(store).resolve(principal.key_id, stored.secret_hash)
    finally:
        await store.close()
