"""SQLite adapter: the embedded default. WAL mode, one serialized writer, one shared reader.

aiosqlite runs each connection on its own thread. Writes are serialized in process by a lock
(SQLite allows one writer anyway) and across processes by `BEGIN IMMEDIATE` + busy_timeout;
reads go to a second connection, which in WAL mode never waits for the writer, and reads every
statement whole (keel.storage.sqlite.connection says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from keel.domain.api_keys import ApiKey
from keel.domain.errors import Unavailable, VersionMismatch
from keel.domain.events import PROFILE_ERASED, DomainEvent
from keel.domain.profile import Profile
from keel.observability.database import DatabaseObserver
from keel.observability.tracing import current_traceparent
from keel.service.ports import IdempotencyRecord, OutboxRecord, ProfileQuery, StreamCopies
from keel.storage.audit_log import SqlAuditLog
from keel.storage.layout_records import LayoutReading, SqlLayoutRecords
from keel.storage.layout_view import LayoutProfiles, LayoutView
from keel.storage.layouts import RECORD_NAME, Layout, LayoutRecord, missing_record, record_from_row
from keel.storage.personal_data import SqlErasureAcknowledgements, SqlErasureSagas, SqlPersonalData
from keel.storage.residency_audit import SqlResidencyAudit
from keel.storage.rows import (
    API_KEY_COLUMNS,
    IDEMPOTENCY_COLUMNS,
    OUTBOX_COLUMNS,
    PROFILE_COLUMNS,
    RELAY_LEASE,
    api_key_from_row,
    idempotency_record_from_row,
    outbox_record_from_row,
    profile_from_row,
    profile_values,
    uniqueness_conflict,
)
from keel.storage.sqlite.connection import Connection, WholeStatements
from keel.storage.sqlite.documents import SqliteDocumentProfiles
from keel.storage.sqlite.times import iso as _iso
from keel.storage.sqlite.times import iso_or_none as _iso_or_none
from keel.storage.sqlite.times import parse_time as _time
from keel.storage.sqlite.webhooks import SqliteWebhooks
from keel.storage.subject_links import SqlSubjectLinks

# Built from constants only; every value goes through a ? placeholder.
_SELECT_PROFILE = f"""
SELECT {PROFILE_COLUMNS},
  (SELECT coalesce(json_group_array(json_array(address, verified, is_primary)), '[]')
     FROM (SELECT * FROM profile_emails e WHERE e.profile_id = p.id ORDER BY position)),
  (SELECT coalesce(json_group_array(json_array(kind, url)), '[]')
     FROM (SELECT * FROM profile_links l WHERE l.profile_id = p.id ORDER BY position))
FROM profiles p
"""  # noqa: S608


_RESERVE_ATTEMPTS = 3
# How long a node's acknowledgement of the layout record waits for another process's writer.
_ACK_BUSY_MS = 100


class SqliteStore:
    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: WholeStatements,
        observer: DatabaseObserver,
        acquire_timeout: float,
        layout: Layout = Layout.NORMALIZED,
        node_id: str | None = None,
    ) -> None:
        self.layout = layout  # the configured one, checked at start-up; units of work follow the record
        self.view = LayoutView(node_id)
        self._acker: aiosqlite.Connection | None = None  # a serving node's: see acknowledge
        # Bounded wait for the writer: shorter than an idempotency lease, so no request can
        # still be waiting when its reservation is taken over.
        self.acquire_timeout = acquire_timeout
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self.observer = observer

    @classmethod
    async def open(
        cls,
        path: Path,
        observer: DatabaseObserver,
        *,
        acquire_timeout: float = 5.0,
        layout: Layout = Layout.NORMALIZED,
        node_id: str | None = None,
    ) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await writer.execute_fetchall("PRAGMA journal_mode=WAL")
            reader = WholeStatements(await _connect(path))
        except BaseException:
            await writer.close()
            raise
        store = cls(writer, reader, observer, acquire_timeout, layout, node_id)
        if node_id is not None:
            store._acker = await _connect(path, busy_timeout_ms=_ACK_BUSY_MS)
        observer.metrics.db_pool_size.set(2)
        # The reader is shared by every read, never lent out; the writer is "in use" while a
        # write unit of work holds it.
        observer.metrics.db_pool_in_use.set_function(lambda: float(store._write_lock.locked()))
        return store

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> SqliteUnitOfWork:
        # SQLite has no replicas: `replica_ok` reads go where every read goes.
        return SqliteUnitOfWork(self, read_only)

    async def layout_reading(self) -> LayoutReading:
        """The layout record and the migration's progress (keel.storage.layout_gauges), on the reader."""
        return await SqlLayoutRecords(SqliteSession(self._reader)).reading()

    async def schema_revision(self) -> str | None:
        try:
            async with self._reader.execute("SELECT version_num FROM alembic_version") as cursor:
                row = await cursor.fetchone()
        except sqlite3.OperationalError:
            return None
        return str(row[0]) if row else None

    async def layout_record(self) -> LayoutRecord | None:
        """What the database records of its profiles' layout; None before the layouts' revision."""
        try:
            async with self._reader.execute(
                "SELECT read_layout, phase, target_layout FROM storage_layout WHERE name = ?", (RECORD_NAME,)
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.OperationalError:
            return None
        if row is None:
            raise missing_record()  # the table is there: past 0008
        return record_from_row(*row)

    async def close(self) -> None:
        if self._acker is not None:
            # A node that stops serving no longer holds up a migration waiting on it.
            with contextlib.suppress(sqlite3.Error):
                await SqlLayoutRecords(SqliteSession(self._acker)).forget_node(self.view.node_id or "")
            await self._acker.close()
        await self._reader.close()
        await self._writer.close()

    async def read(self) -> LayoutRecord:
        """A read-only unit's refresh of the layout record (`LayoutView`), on the reader."""
        return await SqlLayoutRecords(SqliteSession(self._reader)).read()

    async def acknowledge(self, node_id: str, generation: int) -> None:
        """The refresh's note that this node reads by `generation`, on a connection of its own:
        one autocommit statement that waits at most `_ACK_BUSY_MS` for another process's
        writer. One that cannot be written fails the refresh (the node keeps its copy while
        young enough): the migrator relies on every refresh being acknowledged."""
        if self._acker is not None:
            await SqlLayoutRecords(SqliteSession(self._acker)).acknowledge(node_id, generation)


async def _connect(path: Path, *, busy_timeout_ms: int = 5000) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; units of work issue BEGIN/COMMIT themselves.
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in (f"busy_timeout={busy_timeout_ms}", "foreign_keys=ON", "synchronous=FULL"):
            await connection.execute_fetchall(f"PRAGMA {pragma}")
    except BaseException:
        await connection.close()
        raise
    return connection


class SqliteUnitOfWork:
    def __init__(self, store: SqliteStore, read_only: bool) -> None:
        self._store = store
        self._read_only = read_only
        self._connection = store._reader if read_only else store._writer
        self._open = False
        session = SqliteSession(self._connection)
        self.layout_records = SqlLayoutRecords(session)
        # Both layouts' repositories on this connection (a migration's copy uses them directly).
        self.profile_layouts: dict[Layout, SqliteProfiles | SqliteDocumentProfiles] = {
            Layout.NORMALIZED: SqliteProfiles(self._connection, store.observer),
            Layout.DOCUMENT: SqliteDocumentProfiles(self._connection, store.observer),
        }
        # Reads follow the node's copy of the layout record (refreshed when due); writes read
        # the record in their own transaction. Both only once the unit touches a profile.
        self.profiles = LayoutProfiles(
            self.profile_layouts, self._record_to_read if read_only else self._record_of_this_write
        )
        self.idempotency = SqliteIdempotency(self._connection, store.observer)
        self.api_keys = SqliteApiKeys(self._connection, store.observer)
        self.audit = SqlAuditLog(session, store.observer)
        self.subjects = SqlSubjectLinks(session, store.observer)
        self.residency = SqlResidencyAudit(session, store.observer)
        self.outbox = SqliteOutbox(self._connection, store.observer)
        self.webhooks = SqliteWebhooks(self._connection, store.observer)
        self.personal_data = SqlPersonalData(session, store.observer)
        self.erasures = SqlErasureSagas(session, store.observer)
        self.erasure_acknowledgements = SqlErasureAcknowledgements(session, store.observer)

    @property
    def connection(self) -> Connection:
        """The unit's connection: the writer, which it holds alone, or the node's shared reader."""
        return self._connection

    async def _record_to_read(self) -> LayoutRecord:
        return await self._store.view.current(self._store)

    async def _record_of_this_write(self) -> LayoutRecord:
        # In the write transaction (BEGIN IMMEDIATE): no phase can change until it ends.
        record = await self.layout_records.read()
        self._store.view.observed(record)
        return record

    async def __aenter__(self) -> Self:
        if self._read_only:
            return self
        lock = self._store._write_lock
        try:
            if lock.locked():
                async with asyncio.timeout(self._store.acquire_timeout):
                    await lock.acquire()
            else:
                await lock.acquire()  # free: taken at once, no timer needed
        except TimeoutError as error:
            raise Unavailable("The database is busy; retry shortly.") from error
        try:
            await self._connection.execute("BEGIN IMMEDIATE")
        except BaseException as error:
            # Cancelled or failed, the lock must go back, and a BEGIN that did run (on
            # aiosqlite's thread, after a cancellation) must not leave a transaction open.
            await _quietly_roll_back(self._connection)
            self._store._write_lock.release()
            if isinstance(error, sqlite3.OperationalError):
                raise Unavailable("The database is busy; retry shortly.") from error
            raise
        self._open = True
        return self

    async def commit(self) -> None:
        if self._open:
            await self._connection.execute("COMMIT")
            self._open = False

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._open:
                self._open = False
                await _quietly_roll_back(self._connection)
        finally:
            if not self._read_only:
                self._store._write_lock.release()
        if isinstance(exc, sqlite3.OperationalError):
            # Locked or unwritable database: a condition to retry, not a bug to report as 500.
            raise Unavailable("The database is busy or unavailable; retry shortly.") from exc


async def _quietly_roll_back(connection: Connection) -> None:
    # SQLite may already have rolled back (a full disk does that); the error that got us here
    # is the one to report, not this one.
    with contextlib.suppress(sqlite3.Error):
        await connection.execute("ROLLBACK")


class SqliteProfiles:
    def __init__(self, connection: Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def get(self, profile_id: str) -> Profile | None:
        with self._observer.call("get_profile"):
            async with self._db.execute(
                _SELECT_PROFILE + " WHERE p.id = ? AND p.deleted_at IS NULL", (profile_id,)
            ) as cursor:
                row = await cursor.fetchone()
        return profile_from_row(tuple(row), _time) if row else None

    async def find(self, query: ProfileQuery) -> list[Profile]:
        conditions = ["p.deleted_at IS NULL"]
        params: list[Any] = []
        if query.handle is not None:
            conditions.append("p.handle = ?")
            params.append(query.handle)
        if query.email is not None:
            conditions.append(
                "p.id IN (SELECT profile_id FROM profile_emails WHERE address_normalized = ? AND live)"
            )
            params.append(query.email)
        if query.ids is not None:
            conditions.append(f"p.id IN ({','.join('?' * len(query.ids))})")
            params.extend(query.ids)
        if query.after_id is not None:
            conditions.append("p.id > ?")
            params.append(query.after_id)
        sql = f"{_SELECT_PROFILE} WHERE {' AND '.join(conditions)} ORDER BY p.id LIMIT ?"
        params.append(query.limit)
        with self._observer.call("find_profiles"):
            async with self._db.execute(sql, params) as cursor:
                rows = await cursor.fetchall()
        return [profile_from_row(tuple(row), _time) for row in rows]

    async def add(self, profile: Profile) -> None:
        with self._observer.call("add_profile"):
            await self._insert(profile)

    async def _insert(self, profile: Profile) -> None:
        try:
            await self._db.execute(
                "INSERT INTO profiles (id, handle, display_name, bio, avatar_url, locale, timezone,"
                " attributes, version, created_at, updated_at, deleted_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                profile_values(profile, _iso),
            )
            await self._write_children(profile)
        except sqlite3.IntegrityError as error:
            raise uniqueness_conflict(str(error)) from None

    async def scan(self, after_id: str | None, limit: int, *, through_id: str | None = None) -> list[Profile]:
        """Every stored profile, soft-deleted ones too, in id order after `after_id` (up to
        `through_id`): what a migration's tools and tests read of one layout."""
        with self._observer.call("scan_profiles"):
            async with self._db.execute(
                _SELECT_PROFILE + " WHERE p.id > ?1 AND (?2 IS NULL OR p.id <= ?2) ORDER BY p.id LIMIT ?3",
                (after_id or "", through_id, limit),
            ) as cursor:
                rows = await cursor.fetchall()
        return [profile_from_row(tuple(row), _time) for row in rows]

    async def ids_after(
        self, after_id: str | None, limit: int, *, through_id: str | None = None
    ) -> list[str]:
        """The ids stored after `after_id` (up to `through_id`), soft-deleted ones too, in order."""
        with self._observer.call("scan_profiles"):
            async with self._db.execute(
                "SELECT id FROM profiles WHERE id > ?1 AND (?2 IS NULL OR id <= ?2) ORDER BY id LIMIT ?3",
                (after_id or "", through_id, limit),
            ) as cursor:
                rows = await cursor.fetchall()
        return [str(row[0]) for row in rows]

    async def lock_ids(self, profile_ids: Sequence[str]) -> None:
        """Nothing to do on SQLite: a write transaction excludes every other writer already."""

    async def load_ids(self, profile_ids: Sequence[str]) -> list[Profile]:
        """These profiles as stored (soft-deleted ones too), in id order; missing ones left out."""
        found: list[Profile] = []
        with self._observer.call("scan_profiles"):
            for start in range(0, len(profile_ids), 500):  # SQLite's bound on parameters
                chunk = list(profile_ids[start : start + 500])
                async with self._db.execute(
                    _SELECT_PROFILE + f" WHERE p.id IN ({','.join('?' * len(chunk))}) ORDER BY p.id", chunk
                ) as cursor:
                    found += [profile_from_row(tuple(row), _time) for row in await cursor.fetchall()]
        return sorted(found, key=lambda profile: profile.id)

    async def put(self, profile: Profile, *, only_if_newer: bool = False) -> bool:
        """Store `profile` as it is over whatever this layout holds under its id (a mirror's
        write during a migration); with `only_if_newer`, only where no row or an older version
        is there (a backfill's copy). Whether it wrote."""
        with self._observer.call("mirror_profile"):
            if only_if_newer:
                async with self._db.execute(
                    "SELECT version FROM profiles WHERE id = ?", (profile.id,)
                ) as cursor:
                    stored = await cursor.fetchone()
                if stored is not None and stored[0] >= profile.version:
                    return False
            await self._db.execute("DELETE FROM profiles WHERE id = ?", (profile.id,))
            await self._insert(profile)
            return True

    async def remove(self, profile_ids: Sequence[str]) -> None:
        with self._observer.call("mirror_profile"):
            await self._db.executemany("DELETE FROM profiles WHERE id = ?", [(i,) for i in profile_ids])

    async def update(self, profile: Profile, expected_version: int) -> None:
        with self._observer.call("update_profile"):
            try:
                cursor = await self._db.execute(
                    # Numbered parameters: the same value list as the INSERT, plus the expected
                    # version (created_at is written back unchanged).
                    "UPDATE profiles SET handle = ?2, display_name = ?3, bio = ?4, avatar_url = ?5,"
                    " locale = ?6, timezone = ?7, attributes = ?8, version = ?9, created_at = ?10,"
                    " updated_at = ?11, deleted_at = ?12"
                    " WHERE id = ?1 AND version = ?13 AND deleted_at IS NULL",
                    (*profile_values(profile, _iso), expected_version),
                )
                if cursor.rowcount != 1:
                    raise VersionMismatch("The profile changed meanwhile.", current_version=None)
                await self._db.execute("DELETE FROM profile_emails WHERE profile_id = ?", (profile.id,))
                await self._db.execute("DELETE FROM profile_links WHERE profile_id = ?", (profile.id,))
                await self._write_children(profile)
            except sqlite3.IntegrityError as error:
                raise uniqueness_conflict(str(error)) from None

    async def _write_children(self, profile: Profile) -> None:
        live = profile.deleted_at is None
        await self._db.executemany(
            "INSERT INTO profile_emails (profile_id, position, address, address_normalized, verified,"
            " is_primary, live) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (profile.id, i, e.address, e.normalized, e.verified, e.primary, live)
                for i, e in enumerate(profile.fields.emails)
            ],
        )
        await self._db.executemany(
            "INSERT INTO profile_links (profile_id, position, kind, url) VALUES (?, ?, ?, ?)",
            [(profile.id, i, link.kind, link.url) for i, link in enumerate(profile.fields.links)],
        )


class SqliteIdempotency:
    def __init__(self, connection: Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def reserve(self, record: IdempotencyRecord, now: datetime) -> IdempotencyRecord | None:
        with self._observer.call("reserve_idempotency_key"):
            for _ in range(_RESERVE_ATTEMPTS):
                # Take over only what is expired or abandoned; anything else stays and is returned.
                await self._db.execute(
                    "DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND"
                    " (expires_at <= ? OR (state = 'in_progress' AND locked_until <= ?))",
                    (record.scope, record.key, _iso(now), _iso(now)),
                )
                cursor = await self._db.execute(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, state, outcome, locked_until,"
                    " expires_at) VALUES (?, ?, ?, ?, NULL, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        record.scope,
                        record.key,
                        record.fingerprint,
                        record.state.value,
                        _iso(record.locked_until),
                        _iso(record.expires_at),
                    ),
                )
                if cursor.rowcount == 1:
                    return None
                async with self._db.execute(_SELECT_IDEMPOTENCY_RECORD, (record.scope, record.key)) as select:
                    row = await select.fetchone()
                if row is not None:
                    return idempotency_record_from_row(row, _time)
        raise Unavailable("The idempotency key is changing hands; retry shortly.")

    async def complete(self, scope: str, key: str, fingerprint: str, outcome: str) -> bool:
        with self._observer.call("complete_idempotency_key"):
            cursor = await self._db.execute(
                "UPDATE idempotency_keys SET state = 'completed', outcome = ?"
                " WHERE scope = ? AND key = ? AND fingerprint = ? AND state = 'in_progress'",
                (outcome, scope, key, fingerprint),
            )
        return cursor.rowcount == 1

    async def release(self, scope: str, key: str) -> None:
        with self._observer.call("release_idempotency_key"):
            await self._db.execute(
                "DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND state = 'in_progress'",
                (scope, key),
            )

    async def purge_expired(self, now: datetime) -> int:
        with self._observer.call("purge_idempotency_keys"):
            cursor = await self._db.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= ?", (_iso(now),)
            )
        return cursor.rowcount


class SqliteApiKeys:
    def __init__(self, connection: Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def add(self, key: ApiKey) -> None:
        with self._observer.call("add_api_key"):
            await self._db.execute(
                "INSERT INTO api_keys"
                " (id, secret_hash, scopes, api_version, name, created_at, revoked_at, plan, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.secret_hash,
                    " ".join(sorted(key.scopes)),
                    key.api_version,
                    key.name,
                    _iso(key.created_at),
                    _iso_or_none(key.revoked_at),
                    key.plan,
                    _iso_or_none(key.expires_at),
                ),
            )

    async def get(self, key_id: str) -> ApiKey | None:
        with self._observer.call("get_api_key"):
            async with self._db.execute(_SELECT_API_KEY + " WHERE id = ?", (key_id,)) as cursor:
                row = await cursor.fetchone()
        return api_key_from_row(row, _time) if row is not None else None

    async def by_verifier(self, verifier: str) -> ApiKey | None:
        with self._observer.call("get_api_key"):
            async with self._db.execute(
                _SELECT_API_KEY + " WHERE secret_hash = ? OR previous_secret_hash = ?", (verifier, verifier)
            ) as cursor:
                row = await cursor.fetchone()
        return api_key_from_row(row, _time) if row is not None else None

    async def get_for_update(self, key_id: str) -> ApiKey | None:
        # A write unit of work holds SQLite's write lock from its start (BEGIN IMMEDIATE): no
        # other writer runs until it ends.
        return await self.get(key_id)

    async def update(self, key: ApiKey) -> None:
        with self._observer.call("update_api_key"):
            await self._db.execute(
                "UPDATE api_keys SET secret_hash = ?, scopes = ?, name = ?, plan = ?, revoked_at = ?,"
                " expires_at = ?, previous_secret_hash = ?, previous_expires_at = ? WHERE id = ?",
                (
                    key.secret_hash,
                    " ".join(sorted(key.scopes)),
                    key.name,
                    key.plan,
                    _iso_or_none(key.revoked_at),
                    _iso_or_none(key.expires_at),
                    key.previous_secret_hash,
                    _iso_or_none(key.previous_expires_at),
                    key.id,
                ),
            )

    async def list_all(self) -> list[ApiKey]:
        with self._observer.call("list_api_keys"):
            async with self._db.execute(_SELECT_API_KEY + " ORDER BY created_at, id") as cursor:
                rows = await cursor.fetchall()
        return [api_key_from_row(row, _time) for row in rows]

    async def revoke(self, key_id: str, at: datetime) -> bool:
        with self._observer.call("revoke_api_key"):
            cursor = await self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_iso(at), key_id)
            )
        return cursor.rowcount == 1


_SELECT_API_KEY = f"SELECT {API_KEY_COLUMNS} FROM api_keys"  # noqa: S608 - constants only
_SELECT_IDEMPOTENCY_RECORD = f"SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys WHERE scope = ? AND key = ?"  # noqa: S608


class SqliteOutbox:
    def __init__(self, connection: Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def add(self, event: DomainEvent, source: str) -> None:
        with self._observer.call("add_event"):
            await self._db.execute(
                "INSERT INTO event_outbox (id, type, source, subject, time, data, traceparent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.type,
                    source,
                    event.subject,
                    _iso(event.time),
                    json.dumps(event.data),
                    current_traceparent(),
                ),
            )

    async def unpublished(self, limit: int) -> list[OutboxRecord]:
        with self._observer.call("unpublished_events"):
            async with self._db.execute(
                _SELECT_OUTBOX + " WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,)
            ) as cursor:
                rows = await cursor.fetchall()
        return [outbox_record_from_row(tuple(row), _time) for row in rows]

    async def mark_published(self, published: list[tuple[int, int | None]], at: datetime) -> None:
        with self._observer.call("mark_events_published"):
            await self._db.executemany(
                "UPDATE event_outbox SET published_at = ?, stream_seq = ? WHERE seq = ?",
                [(_iso(at), position, seq) for seq, position in published],
            )

    async def stream_copies(self, subject: str) -> StreamCopies:
        with self._observer.call("stream_copies"):
            async with self._db.execute(
                "SELECT stream_seq, id, published_at IS NULL FROM event_outbox"
                " WHERE subject = ? AND type <> ?",
                (subject, PROFILE_ERASED),
            ) as cursor:
                rows = await cursor.fetchall()
        positions = sorted((int(row[0]), str(row[1])) for row in rows if row[0] is not None)
        return StreamCopies(tuple(positions), sum(1 for row in rows if row[2]))

    async def read_from(self, seq: int, limit: int) -> list[OutboxRecord]:
        with self._observer.call("read_events"):
            async with self._db.execute(
                _SELECT_OUTBOX + " WHERE seq >= ? ORDER BY seq LIMIT ?", (seq, limit)
            ) as cursor:
                rows = await cursor.fetchall()
        return [outbox_record_from_row(tuple(row), _time) for row in rows]

    async def depth(self) -> int:
        with self._observer.call("outbox_depth"):
            async with self._db.execute(
                "SELECT count(*) FROM event_outbox WHERE published_at IS NULL"
            ) as cursor:
                row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def prune_published(self, before: datetime) -> int:
        with self._observer.call("prune_events"):
            cursor = await self._db.execute(
                # Never an event still to fan out to webhooks.
                "DELETE FROM event_outbox WHERE published_at IS NOT NULL AND published_at < ?"
                " AND fanned_out_at IS NOT NULL",
                (_iso(before),),
            )
        return cursor.rowcount

    async def claim_relay_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        with self._observer.call("claim_relay_lease"):
            cursor = await self._db.execute(
                "INSERT INTO event_relay_lease (name, holder, expires_at) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (name) DO UPDATE SET holder = ?2, expires_at = ?3"
                " WHERE event_relay_lease.holder = ?2 OR event_relay_lease.expires_at <= ?4",
                (RELAY_LEASE, holder, _iso(until), _iso(now)),
            )
        return cursor.rowcount == 1

    async def release_relay_lease(self, holder: str) -> None:
        with self._observer.call("release_relay_lease"):
            await self._db.execute(
                "DELETE FROM event_relay_lease WHERE name = ? AND holder = ?", (RELAY_LEASE, holder)
            )


_SELECT_OUTBOX = f"SELECT {OUTBOX_COLUMNS} FROM event_outbox"  # noqa: S608 - constants only


_NUMBERED = re.compile(r"\$(\d+)")


class SqliteSession:
    """`keel.storage.personal_data`'s SQL on this connection: `$n` becomes `?n`."""

    select_profile = _SELECT_PROFILE
    skip_locked = ""  # one writer at a time: nothing to skip
    for_update = ""  # one writer at a time (BEGIN IMMEDIATE): the write lock is held already
    position = "instr"
    for_share = ""  # one writer at a time: the write lock is held already
    epoch_now = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, connection: Connection) -> None:
        self._db = connection

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._db.execute(_NUMBERED.sub(r"?\1", sql), args)
        return cursor.rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._db.execute(_NUMBERED.sub(r"?\1", sql), args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    def time(self, value: datetime) -> Any:
        return _iso(value)

    def parse_time(self, value: Any) -> datetime:
        return _time(value)
