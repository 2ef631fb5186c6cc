"""The personal-data lifecycle's repositories (`PersonalData`, `ErasureSagas`,
`ErasureAcknowledgements`), written once for both databases.

None of this is on a request's hot path (exports, erasures and the purge are rare admin or
housekeeping work), so the SQL is written once with PostgreSQL's `$n` placeholders and a small
`SqlSession` per adapter runs it: SQLite's adapter turns `$n` into `?n` and encodes times as the
fixed ISO text the SQLite store compares.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from keel.domain.erasure import (
    Erasure,
    ErasureState,
    Tombstone,
    TombstoneCause,
    erased_outcome,
)
from keel.domain.events import PROFILE_ERASED, erased_payload
from keel.domain.profile import Profile
from keel.observability.database import DatabaseObserver
from keel.service.ports import DisclosedEvent, IdempotencyRecord, OutboxRecord
from keel.storage.documents import profile_from_document
from keel.storage.layouts import RECORD_NAME, Layout, record_from_row
from keel.storage.rows import (
    IDEMPOTENCY_COLUMNS,
    OUTBOX_COLUMNS,
    idempotency_record_from_row,
    outbox_record_from_row,
    profile_from_row,
)
from keel.storage.webhook_rows import ENDPOINT_COLUMNS, endpoint_from_row


class SqlSession(Protocol):
    """One connection in a unit of work, as the repositories below need it."""

    # The SELECT of a whole profile (emails and links aggregated), without a WHERE clause.
    select_profile: str
    # FOR UPDATE SKIP LOCKED where the database has it: a runner's claim skips rows another
    # runner is claiming.
    skip_locked: str
    # FOR UPDATE where the database has it: the row read is locked until the transaction ends.
    for_update: str
    # The function that finds text in text: `strpos` (PostgreSQL) or `instr` (SQLite).
    position: str
    # FOR SHARE where the database has it: the row read is share-locked until the transaction ends.
    for_share: str
    # The database's clock, in seconds since the epoch (an SQL expression).
    epoch_now: str

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement written with `$n` placeholders; the number of rows it changed."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...

    def time(self, value: datetime) -> Any:
        """A datetime as the driver stores it."""
        ...

    def parse_time(self, value: Any) -> datetime: ...


ERASURE_COLUMNS = (
    "id, profile_id, requested_by, requested_at, give_up_at, state, next_attempt_at, attempts,"
    " last_error, data_removed_at, erased_version, caches_dropped_at, event_id, event_written_at,"
    " holders_recorded_at, acknowledged_at, finished_at, stream_copies_erased_at"
)
_ERASURE_TIMES = (3, 4, 6, 9, 11, 13, 14, 15, 16, 17)


def _erasure_values(erasure: Erasure, db: SqlSession) -> tuple[Any, ...]:
    """In `ERASURE_COLUMNS` order."""

    def time(value: datetime | None) -> Any:
        return db.time(value) if value is not None else None

    return (
        erasure.id,
        erasure.profile_id,
        erasure.requested_by,
        time(erasure.requested_at),
        time(erasure.give_up_at),
        erasure.state.value,
        time(erasure.next_attempt_at),
        erasure.attempts,
        erasure.last_error,
        time(erasure.data_removed_at),
        erasure.erased_version,
        time(erasure.caches_dropped_at),
        erasure.event_id,
        time(erasure.event_written_at),
        time(erasure.holders_recorded_at),
        time(erasure.acknowledged_at),
        time(erasure.finished_at),
        time(erasure.stream_copies_erased_at),
    )


def _erasure_from_row(row: Sequence[Any], db: SqlSession) -> Erasure:
    values: list[Any] = [
        (db.parse_time(value) if value is not None else None) if i in _ERASURE_TIMES else value
        for i, value in enumerate(row)
    ]
    values[5] = ErasureState(values[5])
    return Erasure(*values)


_SELECT_DOCUMENT_ANY_STATE = (
    "SELECT id, CAST(document AS TEXT), version, deleted_at FROM profile_documents WHERE id = $1"
)


async def lock_profile_rows(db: SqlSession, profile_id: str) -> list[int]:
    """Lock the profile's rows until the transaction ends, in whichever layout holds them
    (docs/layouts.md), and return their versions (none: no row). Locked in the order writes
    lock them (the layout reads go to first), the layout record share-locked as a write does
    (keel.storage.layout_view), so that this and a write of the same profile during a migration
    cannot deadlock."""
    layout_rows = await db.fetch(
        "SELECT read_layout, phase, target_layout FROM storage_layout"  # noqa: S608 - constants only
        f" WHERE name = $1 {db.for_share}",
        RECORD_NAME,
    )
    first = record_from_row(*layout_rows[0]).reads_from() if layout_rows else Layout.NORMALIZED
    tables = ("profiles", "profile_documents")
    versions: list[int] = []
    for table in tables if first is Layout.NORMALIZED else reversed(tables):
        rows = await db.fetch(
            f"SELECT version FROM {table} WHERE id = $1 {db.for_update}",  # noqa: S608 - constants only
            profile_id,
        )
        versions += [int(row[0]) for row in rows]
    return versions


class SqlPersonalData:
    def __init__(self, db: SqlSession, observer: DatabaseObserver) -> None:
        self._db = db
        self._observer = observer

    async def profile_any_state(self, profile_id: str) -> Profile | None:
        """The profile in whichever layout holds it (docs/layouts.md). Both may: during a
        migration they hold the same, and after one the old layout keeps an older copy until
        it is dropped; the newest version is the profile."""
        with self._observer.call("export_profile"):
            rows = await self._db.fetch(self._db.select_profile + " WHERE p.id = $1", profile_id)
            found = [profile_from_row(tuple(row), self._db.parse_time) for row in rows]
            # The document as text on both databases.
            rows = await self._db.fetch(_SELECT_DOCUMENT_ANY_STATE, profile_id)
            found += [profile_from_document(tuple(row), self._db.parse_time) for row in rows]
        return max(found, key=lambda profile: profile.version, default=None)

    async def events_of(self, profile_id: str) -> list[OutboxRecord]:
        with self._observer.call("export_events"):
            rows = await self._db.fetch(
                f"SELECT {OUTBOX_COLUMNS} FROM event_outbox WHERE subject = $1 ORDER BY seq",  # noqa: S608 - constants only
                profile_id,
            )
        return [outbox_record_from_row(tuple(row), self._db.parse_time) for row in rows]

    async def deliveries_of(self, profile_id: str) -> list[DisclosedEvent]:
        with self._observer.call("export_webhook_deliveries"):
            rows = await self._db.fetch(
                "SELECT d.endpoint_id, e.url, d.event_id, d.event_type, d.state, d.attempts,"
                " d.last_attempt_at, d.finished_at FROM webhook_deliveries d"
                " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " WHERE d.subject = $1 ORDER BY d.created_at, d.id",
                profile_id,
            )
        parse = self._db.parse_time
        return [
            DisclosedEvent(
                str(row[0]),
                str(row[1]),
                str(row[2]),
                str(row[3]),
                str(row[4]),
                int(row[5]),
                parse(row[6]) if row[6] is not None else None,
                parse(row[7]) if row[7] is not None else None,
            )
            for row in rows
        ]

    async def idempotency_records_of(self, profile_id: str) -> list[IdempotencyRecord]:
        with self._observer.call("export_idempotency_records"):
            rows = await self._db.fetch(
                f"SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys"  # noqa: S608 - constants only
                f" WHERE outcome IS NOT NULL AND {self._db.position}(outcome, $1) > 0"
                " ORDER BY expires_at, key",
                profile_id,
            )
        records = [idempotency_record_from_row(tuple(row), self._db.parse_time) for row in rows]
        # The text search narrows; the outcome's own id decides (an attribute of another
        # profile may mention this id).
        return [r for r in records if outcome_profile_id(r.outcome) == profile_id]

    async def remove(self, profile_id: str, at: datetime, cause: TombstoneCause) -> int | None:
        db = self._db
        with self._observer.call("remove_personal_data"):
            # The profile's row lock first: a write of it in flight commits before this reads on
            # (its event is then among the events erased below, and the version read is its
            # version), and none starts until this transaction ends.
            versions = await lock_profile_rows(db, profile_id)
            # Its end user's subject (the link is personal data too): also when the profile's
            # rows are gone already, so that nothing linked to it outlives it.
            await db.execute("DELETE FROM profile_subjects WHERE profile_id = $1", profile_id)
            if not versions:
                return None
            version = max(versions)  # an old layout's copy may be older
            events = await db.fetch(
                "SELECT seq, type, data FROM event_outbox WHERE subject = $1 ORDER BY seq", profile_id
            )
            for seq, event_type, data in events:
                erased = erased_payload(event_type, json.loads(data), at)
                await db.execute("UPDATE event_outbox SET data = $2 WHERE seq = $1", seq, json.dumps(erased))
            # The copies webhook deliveries keep of what they send (to retry, and to replay a
            # dead letter): the same erased form, so a replay sends no personal data.
            deliveries = await db.fetch(
                "SELECT id, event_type, payload FROM webhook_deliveries WHERE subject = $1", profile_id
            )
            for delivery_id, event_type, payload in deliveries:
                sent = json.loads(payload)
                sent["data"] = erased_payload(event_type, sent["data"], at)
                await db.execute(
                    "UPDATE webhook_deliveries SET payload = $2 WHERE id = $1",
                    delivery_id,
                    json.dumps(sent, separators=(",", ":")),
                )
            # The admin log's entries about the profile keep what was done and when, not to whom
            # (which end user a link named: a hash of the subject).
            audited = await db.fetch(
                "SELECT seq, detail FROM admin_audit WHERE subject = $1 AND detail LIKE '%\"end_user\"%'",
                profile_id,
            )
            for seq, detail_text in audited:
                detail = json.loads(detail_text)
                if isinstance(detail, dict) and "end_user" in detail:
                    del detail["end_user"]
                    await db.execute(
                        "UPDATE admin_audit SET detail = $2 WHERE seq = $1",
                        seq,
                        json.dumps(detail, separators=(",", ":"), sort_keys=True),
                    )
            for record in await self.idempotency_records_of(profile_id):
                # The fingerprint is a hash of the request's personal values: it goes too, so
                # a retry of the request is answered from the erased outcome, not compared.
                await db.execute(
                    "UPDATE idempotency_keys SET outcome = $3, fingerprint = 'erased'"
                    " WHERE scope = $1 AND key = $2",
                    record.scope,
                    record.key,
                    json.dumps(erased_outcome(profile_id, at)),
                )
            await db.execute("DELETE FROM profile_emails WHERE profile_id = $1", profile_id)
            await db.execute("DELETE FROM profile_links WHERE profile_id = $1", profile_id)
            await db.execute("DELETE FROM profiles WHERE id = $1", profile_id)
            await db.execute("DELETE FROM profile_document_emails WHERE profile_id = $1", profile_id)
            await db.execute("DELETE FROM profile_documents WHERE id = $1", profile_id)
            await db.execute(
                "INSERT INTO profile_tombstones (profile_id, removed_at, cause, last_version)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                profile_id,
                db.time(at),
                cause.value,
                version,
            )
        return version

    async def tombstone(self, profile_id: str) -> Tombstone | None:
        with self._observer.call("get_tombstone"):
            rows = await self._db.fetch(
                "SELECT profile_id, removed_at, cause, last_version FROM profile_tombstones"
                " WHERE profile_id = $1",
                profile_id,
            )
        if not rows:
            return None
        row = rows[0]
        return Tombstone(row[0], self._db.parse_time(row[1]), TombstoneCause(row[2]), int(row[3]))

    async def deleted_before(self, before: datetime, limit: int) -> list[str]:
        with self._observer.call("find_expired_deletions"):
            # Both layouts (docs/layouts.md), each an index scan on its partial index on
            # deleted_at that stops at the limit; the union sorts at most twice the limit (it
            # sorted every expired row of both tables before: a backlog made each batch dearer).
            rows = await self._db.fetch(
                "SELECT id, deleted_at FROM ("
                " SELECT * FROM (SELECT id, deleted_at FROM profiles"
                " WHERE deleted_at IS NOT NULL AND deleted_at < $1"
                " ORDER BY deleted_at, id LIMIT $2) AS normalized"
                " UNION ALL SELECT * FROM (SELECT id, deleted_at FROM profile_documents"
                " WHERE deleted_at IS NOT NULL AND deleted_at < $1"
                " ORDER BY deleted_at, id LIMIT $2) AS documents"
                ") AS expired ORDER BY deleted_at, id LIMIT $2",
                self._db.time(before),
                limit,
            )
        return [str(row[0]) for row in rows]


def outcome_profile_id(outcome: str | None) -> str | None:
    """The id of the profile an idempotency record's stored outcome is (None: not a profile)."""
    try:
        document = json.loads(outcome) if outcome is not None else None
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    found = document.get("id")
    return found if isinstance(found, str) else None


_SELECT_ERASURE = f"SELECT {ERASURE_COLUMNS} FROM profile_erasures"  # noqa: S608 - constants only


class SqlErasureSagas:
    def __init__(self, db: SqlSession, observer: DatabaseObserver) -> None:
        self._db = db
        self._observer = observer

    async def add(self, erasure: Erasure) -> bool:
        count = len(ERASURE_COLUMNS.split(","))
        placeholders = ", ".join(f"${i}" for i in range(1, count + 1))
        with self._observer.call("add_erasure"):
            added = await self._db.execute(
                f"INSERT INTO profile_erasures ({ERASURE_COLUMNS}) VALUES ({placeholders})"  # noqa: S608 - placeholders only
                " ON CONFLICT DO NOTHING",
                *_erasure_values(erasure, self._db),
            )
        return added == 1

    async def get(self, erasure_id: str) -> Erasure | None:
        return await self._one(_SELECT_ERASURE + " WHERE id = $1", erasure_id)

    async def of_profile(self, profile_id: str) -> Erasure | None:
        return await self._one(_SELECT_ERASURE + " WHERE profile_id = $1", profile_id)

    async def _one(self, sql: str, value: str) -> Erasure | None:
        with self._observer.call("get_erasure"):
            rows = await self._db.fetch(sql, value)
        return _erasure_from_row(rows[0], self._db) if rows else None

    async def save(self, erasure: Erasure, holder: str, lease_until: datetime) -> bool:
        columns = ERASURE_COLUMNS.replace(" ", "").split(",")
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=1) if i > 1)
        holder_at, lease_at = len(columns) + 1, len(columns) + 2
        with self._observer.call("save_erasure"):
            changed = await self._db.execute(
                f"UPDATE profile_erasures SET {assignments}, lease_until = ${lease_at}"  # noqa: S608 - constants only
                f" WHERE id = $1 AND lease_holder = ${holder_at}",
                *_erasure_values(erasure, self._db),
                holder,
                self._db.time(lease_until),
            )
        return changed == 1

    async def claim_due(self, holder: str, now: datetime, lease_until: datetime, limit: int) -> list[Erasure]:
        with self._observer.call("claim_erasures"):
            rows = await self._db.fetch(
                "UPDATE profile_erasures SET lease_holder = $1, lease_until = $3 WHERE id IN"  # noqa: S608 - constants only
                " (SELECT id FROM profile_erasures WHERE state = 'running' AND next_attempt_at <= $2"
                "  AND (lease_until IS NULL OR lease_until <= $2 OR lease_holder = $1)"
                f"  ORDER BY next_attempt_at, id LIMIT $4 {self._db.skip_locked})"
                f" RETURNING {ERASURE_COLUMNS}",
                holder,
                self._db.time(now),
                self._db.time(lease_until),
                limit,
            )
        return sorted((_erasure_from_row(row, self._db) for row in rows), key=lambda e: e.next_attempt_at)

    async def restart(self, erasure_id: str, now: datetime, give_up_at: datetime) -> None:
        with self._observer.call("restart_erasure"):
            await self._db.execute(
                "UPDATE profile_erasures SET state = 'running', next_attempt_at = $2, give_up_at = $3,"
                " attempts = 0, lease_holder = NULL, lease_until = NULL WHERE id = $1 AND state = 'failed'",
                erasure_id,
                self._db.time(now),
                self._db.time(give_up_at),
            )


class SqlErasureAcknowledgements:
    def __init__(self, db: SqlSession, observer: DatabaseObserver) -> None:
        self._db = db
        self._observer = observer

    async def expect(self, event_id: str, event_time: datetime, at: datetime) -> int:
        db = self._db
        with self._observer.call("expect_acknowledgements"):
            rows = await db.fetch(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id")  # noqa: S608 - constants only
            endpoints = [endpoint_from_row(tuple(row), db.parse_time).endpoint for row in rows]
            # The dispatcher's own test of who receives the event: a holder that never
            # receives it (not its type, registered after it) cannot acknowledge it.
            for endpoint in endpoints:
                if endpoint.holds_personal_data and endpoint.wants(PROFILE_ERASED, event_time):
                    await db.execute(
                        "INSERT INTO erasure_acknowledgements (event_id, holder, expected_at)"
                        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        event_id,
                        endpoint.id,
                        db.time(at),
                    )
            counted = await db.fetch(
                "SELECT count(*) FROM erasure_acknowledgements WHERE event_id = $1", event_id
            )
        return int(counted[0][0])

    async def acknowledge_delivered(self, event_id: str) -> int:
        with self._observer.call("acknowledge_erasures"):
            return await self._db.execute(
                "UPDATE erasure_acknowledgements SET acknowledged_at = ("
                "  SELECT min(d.finished_at) FROM webhook_deliveries d WHERE d.event_id = $1"
                "  AND d.endpoint_id = erasure_acknowledgements.holder AND d.state = 'delivered')"
                " WHERE event_id = $1 AND acknowledged_at IS NULL AND EXISTS ("
                "  SELECT 1 FROM webhook_deliveries d WHERE d.event_id = $1"
                "  AND d.endpoint_id = erasure_acknowledgements.holder AND d.state = 'delivered')",
                event_id,
            )

    async def pending(self, event_id: str) -> list[str]:
        with self._observer.call("pending_acknowledgements"):
            rows = await self._db.fetch(
                "SELECT a.holder FROM erasure_acknowledgements a"
                " WHERE a.event_id = $1 AND a.acknowledged_at IS NULL"
                " AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = a.holder)"
                " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = a.event_id"
                "  AND d.endpoint_id = a.holder AND d.state = 'delivered')"
                " ORDER BY a.holder",
                event_id,
            )
        return [str(row[0]) for row in rows]
