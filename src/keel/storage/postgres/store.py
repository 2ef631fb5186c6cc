"""PostgreSQL adapter (asyncpg). The request path talks to the driver directly: no ORM, prepared
statements cached per connection by asyncpg, one round trip per profile read."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from keel.domain.api_keys import ApiKey
from keel.domain.errors import ConcurrentModification, Unavailable, VersionMismatch
from keel.domain.events import PROFILE_ERASED, DomainEvent
from keel.domain.profile import Profile
from keel.observability.database import DatabaseObserver
from keel.observability.tracing import current_traceparent
from keel.service.consistency import in_request, note_commit, required_position
from keel.service.ports import IdempotencyRecord, OutboxRecord, ProfileQuery, StreamCopies
from keel.storage.audit_log import SqlAuditLog
from keel.storage.layout_records import LayoutReading, SqlLayoutRecords
from keel.storage.layout_view import LayoutProfiles, LayoutView
from keel.storage.layouts import RECORD_NAME, Layout, LayoutRecord, missing_record, record_from_row
from keel.storage.personal_data import SqlErasureAcknowledgements, SqlErasureSagas, SqlPersonalData
from keel.storage.postgres.documents import PostgresDocumentProfiles
from keel.storage.postgres.replicas import ACQUIRE_SECONDS, PRIMARY_POSITION, Replica, Replicas, open_replicas
from keel.storage.postgres.webhooks import PostgresWebhooks
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
from keel.storage.subject_links import SqlSubjectLinks

# Built from constants only; every value goes through a $n placeholder.
_SELECT_PROFILE = f"""
SELECT {PROFILE_COLUMNS},
  (SELECT coalesce(json_agg(json_build_array(e.address, e.verified, e.is_primary) ORDER BY e.position),
                   '[]'::json)::text
     FROM profile_emails e WHERE e.profile_id = p.id),
  (SELECT coalesce(json_agg(json_build_array(l.kind, l.url) ORDER BY l.position), '[]'::json)::text
     FROM profile_links l WHERE l.profile_id = p.id)
FROM profiles p
"""  # noqa: S608
# One string object for every read, not a concatenation per call: asyncpg looks the prepared
# statement up by its text, and a string built per call is hashed anew each time.
_SELECT_LIVE_PROFILE = _SELECT_PROFILE + " WHERE p.id = $1 AND p.deleted_at IS NULL"

# Errors that mean "the database is not reachable now", as opposed to a bad statement.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,  # e.g. shutdown or failover: "terminating connection"
    asyncpg.InsufficientResourcesError,  # e.g. too many connections
    # The driver's own state errors when the server drops a connection mid-operation (e.g.
    # "cannot switch to state 12; another operation is in progress" during a shutdown).
    asyncpg.InternalClientError,
)


# What makes a replica skipped (and the read retried on the primary), and a commit's position
# unread: the server gone or slow, or a query it refused (a conflict with recovery).
_REPLICA_FAILURES = (*_CONNECTION_ERRORS, asyncpg.PostgresError)

# A unit of work cut short by these is abandoned mid-statement (see `_give_back`).
_INTERRUPTIONS = (asyncio.CancelledError, TimeoutError)

# Generic only in the type stubs, so the aliases must not be evaluated at run time.
_Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
_Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


_RESERVE_ATTEMPTS = 3


def _time(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value


def _as_is(value: datetime) -> datetime:
    return value  # asyncpg encodes datetimes itself


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to do. asyncpg rolls back any open transaction before calling
    it; its default reset (UNLISTEN, RESET ALL, advisory unlocks, CLOSE ALL) is one more round
    trip per request, for session state Keel never creates (no LISTEN, SET, advisory locks or
    cursors). Anyone adding such state must restore the default reset."""


class PostgresStore:
    def __init__(
        self,
        pool: _Pool,
        observer: DatabaseObserver,
        acquire_timeout: float = 5.0,
        layout: Layout = Layout.NORMALIZED,
        node_id: str | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self._pool = pool
        # Read replicas (None: every read on the primary). With them, every write notes its
        # commit position for the request's consistency token.
        self.replicas = replicas
        # The layout record's generation and the primary's position once the watcher saw it:
        # replicas serve reads only once past it (`_refresh_view`).
        self._floor: tuple[int, int] | None = None
        self.layout = layout  # the configured one, checked at start-up; units of work follow the record
        self._view = LayoutView(node_id)
        # Bounded wait for a connection: shorter than an idempotency lease, so no request can
        # still be waiting when its reservation is taken over.
        self._acquire_timeout = acquire_timeout
        self.observer = observer
        observer.metrics.db_pool_size.set_function(pool.get_size)
        observer.metrics.db_pool_in_use.set_function(lambda: pool.get_size() - pool.get_idle_size())

    @classmethod
    async def open(
        cls,
        url: str,
        observer: DatabaseObserver,
        *,
        min_size: int = 2,
        max_size: int = 10,
        command_timeout: float = 5.0,
        acquire_timeout: float = 5.0,
        layout: Layout = Layout.NORMALIZED,
        node_id: str | None = None,
        replica_urls: Sequence[str] = (),
        replica_max_lag_seconds: float = 1.0,
    ) -> PostgresStore:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            reset=_keep_session,
        )
        replicas = None
        if replica_urls:
            replicas = await open_replicas(
                replica_urls,
                observer.metrics,
                max_lag_seconds=replica_max_lag_seconds,
                max_size=max_size,
                command_timeout=command_timeout,
                reset=_keep_session,
            )
        return cls(pool, observer, acquire_timeout, layout, node_id, replicas)

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> PostgresUnitOfWork:
        """`replica_ok`: a read that a replica may serve (profile reads), when one has replayed
        what the request must see (`keel.service.consistency`) and the layout record is steady."""
        replicas = self.replicas
        if read_only and replica_ok and replicas is not None:
            # A replica cannot refresh the node's copy of the layout record (a refresh
            # acknowledges, a write), nor be trusted to hold a layout a migration is filling:
            # only a fresh copy of a steady record sends reads there, to a replica that has
            # replayed past the record's change (the floor the watcher noted for it).
            settled = self._settled()
            replica = None
            if settled is not None:
                record, floor = settled
                required = required_position()
                replica = replicas.choose(floor if required is None else max(required, floor))
            if replica is None:
                replicas.count("primary")
            else:
                return self._unit(read_only, replica=(replica, replicas, record))
        return self._unit(read_only, notes_position=replicas is not None)

    def _settled(self) -> tuple[LayoutRecord, int] | None:
        """The node's steady copy of the layout record and the primary's position the watcher
        noted for its generation; None while either is missing (the primary reads)."""
        record, floor = self._view.settled(), self._floor
        if record is None or floor is None or floor[0] != record.generation:
            return None
        return record, floor[1]

    def _unit(
        self,
        read_only: bool,
        *,
        notes_position: bool = False,
        replica: tuple[Replica, Replicas, LayoutRecord] | None = None,
    ) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(
            self._pool,
            self.observer,
            read_only,
            self._acquire_timeout,
            self._view,
            notes_position=notes_position,
            replica=replica,
        )

    async def watch_replicas(self) -> None:
        """Follow the replicas' replay positions until cancelled (a background task)."""
        if self.replicas is not None:
            await self.replicas.watch(self._pool, self._refresh_view)

    async def _refresh_view(self) -> None:
        """The node's copy of the layout record, refreshed when due off the request path: reads
        sent to replicas never refresh it (`LayoutView.settled`)."""
        async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
            record = await self._view.current(SqlLayoutRecords(PostgresSession(connection)))
            if self._floor is None or self._floor[0] != record.generation:
                # Read after this generation was: a replica past it has the record's change,
                # and with it every row the migration wrote before (a replica lagging across
                # the end of a migration would read a layout it has not finished replaying).
                position = int(await connection.fetchval(PRIMARY_POSITION))
                self._floor = (record.generation, position)

    async def layout_record(self) -> LayoutRecord | None:
        """What the database records of its profiles' layout; None before the layouts' revision."""
        try:
            row = await self._pool.fetchrow(
                "SELECT read_layout, phase, target_layout FROM storage_layout WHERE name = $1", RECORD_NAME
            )
        except asyncpg.UndefinedTableError:
            return None
        if row is None:
            raise missing_record()  # the table is there: past 0008
        return record_from_row(*row)

    async def layout_reading(self) -> LayoutReading:
        """The layout record and the migration's progress (keel.storage.layout_gauges)."""
        async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
            return await SqlLayoutRecords(PostgresSession(connection)).reading()

    async def schema_revision(self) -> str | None:
        try:
            value = await self._pool.fetchval("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            return None
        return str(value) if value is not None else None

    async def close(self) -> None:
        if self._view.node_id is not None:
            # A node that stops serving no longer holds up a migration waiting on it.
            with contextlib.suppress(*_CONNECTION_ERRORS, asyncpg.PostgresError):
                async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
                    await SqlLayoutRecords(PostgresSession(connection)).forget_node(self._view.node_id)
        if self.replicas is not None:
            await self.replicas.close()
        await self._pool.close()


class PostgresUnitOfWork:
    def __init__(
        self,
        pool: _Pool,
        observer: DatabaseObserver,
        read_only: bool,
        acquire_timeout: float,
        view: LayoutView,
        *,
        notes_position: bool = False,
        replica: tuple[Replica, Replicas, LayoutRecord] | None = None,
    ) -> None:
        self._pool = pool
        self._view = view
        self._acquire_timeout = acquire_timeout
        self._observer = observer
        self._read_only = read_only
        self._transaction: Transaction | None = None
        self._notes_position = notes_position
        # A read on a replica: the replica, its set (to skip it if it fails) and the layout
        # record to read by (the node's settled copy).
        self._replica = replica
        self.served_by_replica = False  # read by keel.storage.guarded: no verdict on the primary

    profiles: PostgresProfiles | PostgresDocumentProfiles | LayoutProfiles
    # Both layouts' repositories on this connection (a migration's copy uses them directly).
    profile_layouts: dict[Layout, PostgresProfiles | PostgresDocumentProfiles]
    layout_records: SqlLayoutRecords
    idempotency: PostgresIdempotency
    api_keys: PostgresApiKeys
    outbox: PostgresOutbox
    webhooks: PostgresWebhooks
    personal_data: SqlPersonalData
    erasures: SqlErasureSagas
    erasure_acknowledgements: SqlErasureAcknowledgements
    _connection: _Connection

    async def __aenter__(self) -> Self:
        if self._replica is not None:
            replica, replicas, _ = self._replica
            try:
                async with asyncio.timeout(ACQUIRE_SECONDS):
                    connection = await replica.pool.acquire()
            except _REPLICA_FAILURES as error:
                # Not reachable, or not soon: skipped until the watcher finds it back; this
                # read goes to the primary.
                replicas.suspend(replica, type(error).__name__)
                replicas.count("primary")
            else:
                replicas.count("replica")
                self._pool = replica.pool
                self.served_by_replica = True
                return self._use(connection)
        try:
            if self._pool.get_idle_size() > 0:
                # An idle connection is handed over without waiting: no timer needed, and a
                # timer (a timeout scope, or acquire(timeout=...)'s extra task) costs measurably
                # on every request.
                connection = await self._pool.acquire()
            else:
                async with asyncio.timeout(self._acquire_timeout):
                    connection = await self._pool.acquire()
        except _CONNECTION_ERRORS as error:
            raise Unavailable("The database is not reachable; retry shortly.") from error
        self._use(connection)
        if not self._read_only:
            self._transaction = connection.transaction()
            try:
                await self._transaction.start()
            except _CONNECTION_ERRORS as error:
                await self._give_back(connection, broken=True)
                raise Unavailable("The database is not reachable; retry shortly.") from error
            except BaseException as error:
                await self._give_back(connection, broken=isinstance(error, _INTERRUPTIONS))
                raise
        return self

    def _use(self, connection: _Connection) -> Self:
        self._connection = connection
        session = PostgresSession(connection)
        self.layout_records = SqlLayoutRecords(session)
        self.profile_layouts = {
            Layout.NORMALIZED: PostgresProfiles(connection, self._observer),
            Layout.DOCUMENT: PostgresDocumentProfiles(connection, self._observer),
        }
        # Reads follow the node's copy of the layout record (refreshed when due); writes read
        # the record in their own transaction. Both only once the unit touches a profile.
        self.profiles = LayoutProfiles(
            self.profile_layouts,
            self._settled_record
            if self.served_by_replica
            else self._record_to_read
            if self._read_only
            else self._record_of_this_write,
        )
        self.idempotency = PostgresIdempotency(connection, self._observer)
        self.api_keys = PostgresApiKeys(connection, self._observer)
        self.audit = SqlAuditLog(session, self._observer)
        self.subjects = SqlSubjectLinks(session, self._observer)
        self.residency = SqlResidencyAudit(session, self._observer)
        self.outbox = PostgresOutbox(connection, self._observer)
        self.webhooks = PostgresWebhooks(connection, self._observer)
        self.personal_data = SqlPersonalData(session, self._observer)
        self.erasures = SqlErasureSagas(session, self._observer)
        self.erasure_acknowledgements = SqlErasureAcknowledgements(session, self._observer)
        return self

    async def _settled_record(self) -> LayoutRecord:
        assert self._replica is not None
        return self._replica[2]

    async def _record_to_read(self) -> LayoutRecord:
        return await self._view.current(self.layout_records)

    async def _record_of_this_write(self) -> LayoutRecord:
        record = await self.layout_records.read(lock=PostgresSession.for_share)
        self._view.observed(record)
        return record

    async def _give_back(self, connection: _Connection, *, broken: bool) -> None:
        if broken:
            # Interrupted mid-statement (deadline, cancellation): the connection's state is
            # unknown and its server may not be answering at all. Releasing it normally would
            # wait, unbounded, for a rollback or a cancel request; close it at once instead
            # (the server rolls back) and let the pool open a fresh one.
            with contextlib.suppress(asyncpg.InterfaceError):  # already closed and handed back
                connection.terminate()
        await self._pool.release(connection)

    async def commit(self) -> None:
        if self._transaction is not None:
            await self._transaction.commit()
            self._transaction = None
            if self._notes_position and in_request():
                await self._note_position()

    async def _note_position(self) -> None:
        """The primary's insert position, at or past this commit's record: a replica that has
        replayed past it has this write. Failing to read it after the commit loses only the
        token (the request answers none, and reads the rest of its way on the primary), never
        the write."""
        try:
            position = await self._connection.fetchval(PRIMARY_POSITION)
        except _REPLICA_FAILURES:
            note_commit(None)
            return
        note_commit(int(position))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, _INTERRUPTIONS):
            if self.served_by_replica:
                assert self._replica is not None
                self._replica[1].suspend(self._replica[0], type(exc).__name__)  # hung, or slow
            self._transaction = None
            await self._give_back(self._connection, broken=True)
            return
        if self.served_by_replica and isinstance(exc, _REPLICA_FAILURES):
            # The replica failed this read (gone, or a query cancelled by a conflict with
            # recovery): skipped until the watcher finds it back, so a retry reads the primary.
            assert self._replica is not None
            self._replica[1].suspend(self._replica[0], type(exc).__name__)
            await self._give_back(self._connection, broken=True)
            raise Unavailable("A read replica failed the read; retry shortly.") from exc
        broken = False
        try:
            if self._transaction is not None:
                transaction, self._transaction = self._transaction, None
                # Through the Transaction object: a bare ROLLBACK would leave asyncpg believing a
                # transaction is open, and the pool would roll back (and warn) a second time.
                await transaction.rollback()
        except _CONNECTION_ERRORS:
            broken = True  # the server rolls back a transaction whose connection is gone
        except BaseException:
            await self._give_back(self._connection, broken=True)
            raise
        await self._give_back(self._connection, broken=broken)
        if isinstance(exc, _CONNECTION_ERRORS):
            raise Unavailable("The database is not reachable; retry shortly.") from exc
        if isinstance(exc, asyncpg.TransactionRollbackError):
            # Deadlock or serialization failure: PostgreSQL rolled the transaction back whole,
            # so a retry is safe.
            raise ConcurrentModification("A concurrent write got in the way; retry the request.") from exc


class PostgresProfiles:
    def __init__(self, connection: _Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def get(self, profile_id: str) -> Profile | None:
        with self._observer.call("get_profile"):
            row = await self._db.fetchrow(_SELECT_LIVE_PROFILE, profile_id)
        return profile_from_row(tuple(row), _time) if row is not None else None

    async def find(self, query: ProfileQuery) -> list[Profile]:
        conditions = ["p.deleted_at IS NULL"]
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if query.handle is not None:
            conditions.append(f"p.handle = {param(query.handle)}")
        if query.email is not None:
            conditions.append(
                "p.id IN (SELECT profile_id FROM profile_emails"  # noqa: S608 - placeholders only
                f" WHERE address_normalized = {param(query.email)} AND live)"
            )
        if query.ids is not None:
            conditions.append(f"p.id = ANY({param(list(query.ids))}::text[])")
        if query.after_id is not None:
            conditions.append(f"p.id > {param(query.after_id)}")
        sql = f"{_SELECT_PROFILE} WHERE {' AND '.join(conditions)} ORDER BY p.id LIMIT {param(query.limit)}"
        with self._observer.call("find_profiles"):
            rows = await self._db.fetch(sql, *params)
        return [profile_from_row(tuple(row), _time) for row in rows]

    async def add(self, profile: Profile) -> None:
        with self._observer.call("add_profile"):
            await self._insert(profile)

    async def _insert(self, profile: Profile) -> None:
        try:
            await self._db.execute(
                "INSERT INTO profiles (id, handle, display_name, bio, avatar_url, locale, timezone,"
                " attributes, version, created_at, updated_at, deleted_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12)",
                *profile_values(profile, _as_is),
            )
            await self._write_children(profile)
        except asyncpg.UniqueViolationError as error:
            raise uniqueness_conflict(error.constraint_name or "") from None

    async def scan(self, after_id: str | None, limit: int, *, through_id: str | None = None) -> list[Profile]:
        """Every stored profile, soft-deleted ones too, in id order after `after_id` (up to
        `through_id`): what a migration's tools and tests read of one layout."""
        sql = f"{_SELECT_PROFILE} WHERE p.id > $1 AND ($2::text IS NULL OR p.id <= $2) ORDER BY p.id LIMIT $3"
        with self._observer.call("scan_profiles"):
            rows = await self._db.fetch(sql, after_id or "", through_id, limit)
        return [profile_from_row(tuple(row), _time) for row in rows]

    async def ids_after(
        self, after_id: str | None, limit: int, *, through_id: str | None = None
    ) -> list[str]:
        """The ids stored after `after_id` (up to `through_id`), soft-deleted ones too, in order."""
        with self._observer.call("scan_profiles"):
            rows = await self._db.fetch(
                "SELECT id FROM profiles WHERE id > $1 AND ($2::text IS NULL OR id <= $2)"
                " ORDER BY id LIMIT $3",
                after_id or "",
                through_id,
                limit,
            )
        return [str(row[0]) for row in rows]

    async def lock_ids(self, profile_ids: Sequence[str]) -> None:
        """Share-lock these rows (those there) until the transaction ends, in id order: no
        write or erasure of them commits meanwhile. Read them after this, in a statement of
        its own: a statement that waited for a lock sees the locked row's new version but its
        children as of its start."""
        with self._observer.call("scan_profiles"):
            await self._db.fetch(
                "SELECT id FROM profiles WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE", list(profile_ids)
            )

    async def load_ids(self, profile_ids: Sequence[str]) -> list[Profile]:
        """These profiles as stored (soft-deleted ones too), in id order; missing ones left out."""
        with self._observer.call("scan_profiles"):
            rows = await self._db.fetch(
                _SELECT_PROFILE + " WHERE p.id = ANY($1::text[]) ORDER BY p.id", list(profile_ids)
            )
        return [profile_from_row(tuple(row), _time) for row in rows]

    async def put(self, profile: Profile, *, only_if_newer: bool = False) -> bool:
        """Store `profile` as it is, over whatever this layout holds under its id (a mirror's
        write during a migration); with `only_if_newer`, only where no row or an older version
        is there (a backfill's copy). Whether it wrote."""
        with self._observer.call("mirror_profile"):
            if only_if_newer:
                stored = await self._db.fetchval(
                    "SELECT version FROM profiles WHERE id = $1 FOR UPDATE", profile.id
                )
                if stored is not None and stored >= profile.version:
                    return False
            await self._db.execute("DELETE FROM profiles WHERE id = $1", profile.id)
            await self._insert(profile)
            return True

    async def remove(self, profile_ids: Sequence[str]) -> None:
        """Delete these rows outright (a migration's verify step: rows its source does not hold)."""
        with self._observer.call("mirror_profile"):
            await self._db.execute("DELETE FROM profiles WHERE id = ANY($1::text[])", list(profile_ids))

    async def update(self, profile: Profile, expected_version: int) -> None:
        with self._observer.call("update_profile"):
            try:
                # The whole row is written back (created_at included, unchanged): one value list
                # for insert and update.
                status = await self._db.execute(
                    "UPDATE profiles SET handle = $2, display_name = $3, bio = $4, avatar_url = $5,"
                    " locale = $6, timezone = $7, attributes = $8::jsonb, version = $9, created_at = $10,"
                    " updated_at = $11, deleted_at = $12"
                    " WHERE id = $1 AND version = $13 AND deleted_at IS NULL",
                    *profile_values(profile, _as_is),
                    expected_version,
                )
                if status != "UPDATE 1":
                    raise VersionMismatch("The profile changed meanwhile.", current_version=None)
                await self._db.execute("DELETE FROM profile_emails WHERE profile_id = $1", profile.id)
                await self._db.execute("DELETE FROM profile_links WHERE profile_id = $1", profile.id)
                await self._write_children(profile)
            except asyncpg.UniqueViolationError as error:
                raise uniqueness_conflict(error.constraint_name or "") from None

    async def _write_children(self, profile: Profile) -> None:
        live = profile.deleted_at is None
        emails = profile.fields.emails
        links = profile.fields.links
        if emails:
            # Inserted in address order, whatever their positions: two writers taking the same
            # addresses then lock them in the same order and cannot deadlock.
            rows = sorted(
                (
                    (profile.id, i, e.address, e.normalized, e.verified, e.primary, live)
                    for i, e in enumerate(emails)
                ),
                key=lambda row: row[3],
            )
            await self._db.executemany(
                "INSERT INTO profile_emails (profile_id, position, address, address_normalized,"
                " verified, is_primary, live) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                rows,
            )
        if links:
            await self._db.executemany(
                "INSERT INTO profile_links (profile_id, position, kind, url) VALUES ($1, $2, $3, $4)",
                [(profile.id, i, link.kind, link.url) for i, link in enumerate(links)],
            )


class PostgresIdempotency:
    def __init__(self, connection: _Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def reserve(self, record: IdempotencyRecord, now: datetime) -> IdempotencyRecord | None:
        with self._observer.call("reserve_idempotency_key"):
            for _ in range(_RESERVE_ATTEMPTS):
                await self._db.execute(
                    "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND"
                    " (expires_at <= $3 OR (state = 'in_progress' AND locked_until <= $3))",
                    record.scope,
                    record.key,
                    now,
                )
                inserted = await self._db.fetchval(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, state, outcome, locked_until,"
                    " expires_at) VALUES ($1, $2, $3, $4, NULL, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
                    record.scope,
                    record.key,
                    record.fingerprint,
                    record.state.value,
                    record.locked_until,
                    record.expires_at,
                )
                if inserted is not None:
                    return None
                # The holder may release its reservation between our INSERT and this SELECT
                # (READ COMMITTED): then the key is free, and we try again.
                row = await self._db.fetchrow(_SELECT_IDEMPOTENCY_RECORD, record.scope, record.key)
                if row is not None:
                    return idempotency_record_from_row(tuple(row), _time)
        raise Unavailable("The idempotency key is changing hands; retry shortly.")

    async def complete(self, scope: str, key: str, fingerprint: str, outcome: str) -> bool:
        with self._observer.call("complete_idempotency_key"):
            status = await self._db.execute(
                "UPDATE idempotency_keys SET state = 'completed', outcome = $4"
                " WHERE scope = $1 AND key = $2 AND fingerprint = $3 AND state = 'in_progress'",
                scope,
                key,
                fingerprint,
                outcome,
            )
        return bool(status == "UPDATE 1")

    async def release(self, scope: str, key: str) -> None:
        with self._observer.call("release_idempotency_key"):
            await self._db.execute(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'in_progress'",
                scope,
                key,
            )

    async def purge_expired(self, now: datetime) -> int:
        with self._observer.call("purge_idempotency_keys"):
            status = await self._db.execute("DELETE FROM idempotency_keys WHERE expires_at <= $1", now)
        return int(status.split()[-1])


class PostgresApiKeys:
    def __init__(self, connection: _Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def add(self, key: ApiKey) -> None:
        with self._observer.call("add_api_key"):
            await self._db.execute(
                "INSERT INTO api_keys"
                " (id, secret_hash, scopes, api_version, name, created_at, revoked_at, plan, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                key.id,
                key.secret_hash,
                " ".join(sorted(key.scopes)),
                key.api_version,
                key.name,
                key.created_at,
                key.revoked_at,
                key.plan,
                key.expires_at,
            )

    async def get(self, key_id: str) -> ApiKey | None:
        with self._observer.call("get_api_key"):
            row = await self._db.fetchrow(_SELECT_API_KEY + " WHERE id = $1", key_id)
        return api_key_from_row(tuple(row), _time) if row is not None else None

    async def by_verifier(self, verifier: str) -> ApiKey | None:
        with self._observer.call("get_api_key"):
            row = await self._db.fetchrow(
                _SELECT_API_KEY + " WHERE secret_hash = $1 OR previous_secret_hash = $1", verifier
            )
        return api_key_from_row(tuple(row), _time) if row is not None else None

    async def get_for_update(self, key_id: str) -> ApiKey | None:
        with self._observer.call("get_api_key"):
            row = await self._db.fetchrow(_SELECT_API_KEY + " WHERE id = $1 FOR UPDATE", key_id)
        return api_key_from_row(tuple(row), _time) if row is not None else None

    async def update(self, key: ApiKey) -> None:
        with self._observer.call("update_api_key"):
            await self._db.execute(
                "UPDATE api_keys SET secret_hash = $1, scopes = $2, name = $3, plan = $4, revoked_at = $5,"
                " expires_at = $6, previous_secret_hash = $7, previous_expires_at = $8 WHERE id = $9",
                key.secret_hash,
                " ".join(sorted(key.scopes)),
                key.name,
                key.plan,
                key.revoked_at,
                key.expires_at,
                key.previous_secret_hash,
                key.previous_expires_at,
                key.id,
            )

    async def list_all(self) -> list[ApiKey]:
        with self._observer.call("list_api_keys"):
            rows = await self._db.fetch(_SELECT_API_KEY + " ORDER BY created_at, id")
        return [api_key_from_row(tuple(row), _time) for row in rows]

    async def revoke(self, key_id: str, at: datetime) -> bool:
        with self._observer.call("revoke_api_key"):
            status = await self._db.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", key_id, at
            )
        return bool(status == "UPDATE 1")


_SELECT_API_KEY = f"SELECT {API_KEY_COLUMNS} FROM api_keys"  # noqa: S608 - constants only
_SELECT_IDEMPOTENCY_RECORD = (
    f"SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys WHERE scope = $1 AND key = $2"  # noqa: S608
)


class PostgresOutbox:
    def __init__(self, connection: _Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def add(self, event: DomainEvent, source: str) -> None:
        with self._observer.call("add_event"):
            await self._db.execute(
                "INSERT INTO event_outbox (id, type, source, subject, time, data, traceparent)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                event.id,
                event.type,
                source,
                event.subject,
                event.time,
                json.dumps(event.data),
                current_traceparent(),
            )

    async def unpublished(self, limit: int) -> list[OutboxRecord]:
        with self._observer.call("unpublished_events"):
            rows = await self._db.fetch(
                _SELECT_OUTBOX + " WHERE published_at IS NULL ORDER BY seq LIMIT $1", limit
            )
        return [outbox_record_from_row(tuple(row), _time) for row in rows]

    async def mark_published(self, published: list[tuple[int, int | None]], at: datetime) -> None:
        with self._observer.call("mark_events_published"):
            await self._db.execute(
                "UPDATE event_outbox AS o SET published_at = $1, stream_seq = p.stream_seq"
                " FROM unnest($2::bigint[], $3::bigint[]) AS p(seq, stream_seq) WHERE o.seq = p.seq",
                at,
                [seq for seq, _ in published],
                [position for _, position in published],
            )

    async def stream_copies(self, subject: str) -> StreamCopies:
        with self._observer.call("stream_copies"):
            rows = await self._db.fetch(
                "SELECT stream_seq, id, published_at IS NULL FROM event_outbox"
                " WHERE subject = $1 AND type <> $2",
                subject,
                PROFILE_ERASED,
            )
        positions = sorted((int(r[0]), str(r[1])) for r in rows if r[0] is not None)
        return StreamCopies(tuple(positions), sum(1 for r in rows if r[2]))

    async def read_from(self, seq: int, limit: int) -> list[OutboxRecord]:
        with self._observer.call("read_events"):
            rows = await self._db.fetch(_SELECT_OUTBOX + " WHERE seq >= $1 ORDER BY seq LIMIT $2", seq, limit)
        return [outbox_record_from_row(tuple(row), _time) for row in rows]

    async def depth(self) -> int:
        with self._observer.call("outbox_depth"):
            value = await self._db.fetchval("SELECT count(*) FROM event_outbox WHERE published_at IS NULL")
        return int(value or 0)

    async def prune_published(self, before: datetime) -> int:
        with self._observer.call("prune_events"):
            status = await self._db.execute(
                # Never an event still to fan out to webhooks.
                "DELETE FROM event_outbox WHERE published_at IS NOT NULL AND published_at < $1"
                " AND fanned_out_at IS NOT NULL",
                before,
            )
        return int(status.split()[-1])

    async def claim_relay_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        with self._observer.call("claim_relay_lease"):
            claimed = await self._db.fetchval(
                "INSERT INTO event_relay_lease (name, holder, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $3"
                " WHERE event_relay_lease.holder = $2 OR event_relay_lease.expires_at <= $4"
                " RETURNING 1",
                RELAY_LEASE,
                holder,
                until,
                now,
            )
        return claimed is not None

    async def release_relay_lease(self, holder: str) -> None:
        with self._observer.call("release_relay_lease"):
            await self._db.execute(
                "DELETE FROM event_relay_lease WHERE name = $1 AND holder = $2", RELAY_LEASE, holder
            )


_SELECT_OUTBOX = f"SELECT {OUTBOX_COLUMNS} FROM event_outbox"  # noqa: S608 - constants only


class PostgresSession:
    """`keel.storage.personal_data`'s SQL on this connection."""

    select_profile = _SELECT_PROFILE
    skip_locked = "FOR UPDATE SKIP LOCKED"
    for_update = "FOR UPDATE"
    position = "strpos"
    for_share = "FOR SHARE"
    epoch_now = "extract(epoch FROM clock_timestamp())::float8"

    def __init__(self, connection: _Connection) -> None:
        self._db = connection

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._db.execute(sql, *args)
        last = status.split()[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return [tuple(row) for row in await self._db.fetch(sql, *args)]

    def time(self, value: datetime) -> Any:
        return value

    def parse_time(self, value: Any) -> datetime:
        return _time(value)
