"""The webhook tables on SQLite (see `keel.service.webhook_ports.WebhookRepository`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from keel.domain.webhooks import WebhookDelivery, WebhookEndpoint
from keel.observability.database import DatabaseObserver
from keel.service.ports import OutboxRecord
from keel.service.webhook_ports import StoredEndpoint
from keel.storage.rows import OUTBOX_COLUMNS, outbox_record_from_row
from keel.storage.sqlite.connection import Connection
from keel.storage.sqlite.times import iso, iso_or_none, parse_time
from keel.storage.webhook_rows import (
    DELIVERY_COLUMNS,
    ENDPOINT_COLUMNS,
    MAX_DUE,
    WEBHOOK_LEASE,
    delivery_from_row,
    endpoint_from_row,
    endpoint_values,
)

# Built from constants only; every value goes through a ? placeholder.
_SELECT_ENDPOINTS = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints"  # noqa: S608
_SELECT_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"  # noqa: S608
_DUE = f"""
SELECT {DELIVERY_COLUMNS} FROM (
  SELECT {DELIVERY_COLUMNS},
    row_number() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS place
  FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ?
) WHERE place <= ? ORDER BY next_attempt_at, id LIMIT {MAX_DUE}
"""  # noqa: S608


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


class SqliteWebhooks:
    def __init__(self, connection: Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def add_endpoint(self, endpoint: WebhookEndpoint, sealed_secret: str) -> None:
        values = endpoint_values(endpoint, sealed_secret)
        with self._observer.call("add_webhook_endpoint"):
            await self._db.execute(
                f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (*values[:3], int(values[3]), values[4], iso(endpoint.created_at)),
            )

    async def endpoints(self) -> list[StoredEndpoint]:
        with self._observer.call("webhook_endpoints"):
            rows = await self._db.execute_fetchall(_SELECT_ENDPOINTS + " ORDER BY created_at, id")
        return [endpoint_from_row(tuple(row), parse_time) for row in rows]

    async def endpoint(self, endpoint_id: str) -> StoredEndpoint | None:
        with self._observer.call("webhook_endpoint"):
            rows = list(await self._db.execute_fetchall(_SELECT_ENDPOINTS + " WHERE id = ?", (endpoint_id,)))
        return endpoint_from_row(tuple(rows[0]), parse_time) if rows else None

    async def replace_sealed_secret(self, endpoint_id: str, old: str, new: str) -> bool:
        with self._observer.call("reseal_webhook_secret"):
            cursor = await self._db.execute(
                "UPDATE webhook_endpoints SET sealed_secret = ? WHERE id = ? AND sealed_secret = ?",
                (new, endpoint_id, old),
            )
        return cursor.rowcount == 1

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        with self._observer.call("delete_webhook_endpoint"):
            # Its deliveries go with it (ON DELETE CASCADE; foreign keys are on).
            cursor = await self._db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
        return cursor.rowcount == 1

    async def events_to_fan_out(self, limit: int) -> list[OutboxRecord]:
        with self._observer.call("events_to_fan_out"):
            rows = await self._db.execute_fetchall(
                f"SELECT {OUTBOX_COLUMNS} FROM event_outbox WHERE fanned_out_at IS NULL"  # noqa: S608
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
        return [outbox_record_from_row(tuple(row), parse_time) for row in rows]

    async def mark_fanned_out(self, seqs: Sequence[int], at: datetime) -> None:
        with self._observer.call("mark_events_fanned_out"):
            await self._db.execute(
                f"UPDATE event_outbox SET fanned_out_at = ? WHERE seq IN ({_placeholders(len(seqs))})",  # noqa: S608
                (iso(at), *seqs),
            )

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        with self._observer.call("add_webhook_delivery"):
            await self._db.execute(
                f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS})"  # noqa: S608
                f" VALUES ({_placeholders(15)}) ON CONFLICT (endpoint_id, event_id) DO NOTHING",
                _delivery_values(delivery),
            )

    async def due_deliveries(self, now: datetime, per_endpoint: int) -> list[WebhookDelivery]:
        with self._observer.call("due_webhook_deliveries"):
            rows = await self._db.execute_fetchall(_DUE, (iso(now), per_endpoint))
        return [delivery_from_row(tuple(row), parse_time) for row in rows]

    async def hold(self, delivery_ids: Sequence[str], until: datetime) -> None:
        with self._observer.call("hold_webhook_deliveries"):
            await self._db.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = ?"  # noqa: S608 - placeholders only
                f" WHERE id IN ({_placeholders(len(delivery_ids))})",
                (iso(until), *delivery_ids),
            )

    async def record_attempt(self, delivery: WebhookDelivery) -> None:
        with self._observer.call("record_webhook_attempt"):
            await self._db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?,"
                " last_attempt_at = ?, last_status = ?, last_error = ?, finished_at = ? WHERE id = ?",
                (
                    delivery.state.value,
                    delivery.attempts,
                    iso_or_none(delivery.next_attempt_at),
                    iso_or_none(delivery.last_attempt_at),
                    delivery.last_status,
                    delivery.last_error,
                    iso_or_none(delivery.finished_at),
                    delivery.id,
                ),
            )

    async def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        with self._observer.call("webhook_delivery"):
            rows = list(await self._db.execute_fetchall(_SELECT_DELIVERIES + " WHERE id = ?", (delivery_id,)))
        return delivery_from_row(tuple(rows[0]), parse_time) if rows else None

    async def deliveries_of(self, endpoint_id: str, state: str, limit: int) -> list[WebhookDelivery]:
        with self._observer.call("webhook_deliveries_of"):
            rows = await self._db.execute_fetchall(
                _SELECT_DELIVERIES + " WHERE endpoint_id = ? AND state = ? ORDER BY created_at, id LIMIT ?",
                (endpoint_id, state, limit),
            )
        return [delivery_from_row(tuple(row), parse_time) for row in rows]

    async def replay_dead(self, endpoint_id: str, delivery_ids: Sequence[str] | None, now: datetime) -> int:
        sql = (
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
            " finished_at = NULL WHERE endpoint_id = ? AND state = 'dead'"
        )
        args: list[object] = [iso(now), endpoint_id]
        if delivery_ids is not None:
            if not delivery_ids:
                return 0
            sql += f" AND id IN ({_placeholders(len(delivery_ids))})"
            args.extend(delivery_ids)
        with self._observer.call("replay_webhook_dead_letters"):
            cursor = await self._db.execute(sql, args)
        return cursor.rowcount

    async def count_dead(self) -> int:
        with self._observer.call("count_webhook_dead_letters"):
            rows = list(
                await self._db.execute_fetchall(
                    "SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'"
                )
            )
        return int(rows[0][0])

    async def prune_delivered(self, before: datetime) -> int:
        with self._observer.call("prune_webhook_deliveries"):
            cursor = await self._db.execute(
                "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished_at < ?", (iso(before),)
            )
        return cursor.rowcount

    async def claim_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        with self._observer.call("claim_webhook_lease"):
            cursor = await self._db.execute(
                "INSERT INTO event_relay_lease (name, holder, expires_at) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (name) DO UPDATE SET holder = ?2, expires_at = ?3"
                " WHERE event_relay_lease.holder = ?2 OR event_relay_lease.expires_at <= ?4",
                (WEBHOOK_LEASE, holder, iso(until), iso(now)),
            )
        return cursor.rowcount == 1

    async def release_lease(self, holder: str) -> None:
        with self._observer.call("release_webhook_lease"):
            await self._db.execute(
                "DELETE FROM event_relay_lease WHERE name = ? AND holder = ?", (WEBHOOK_LEASE, holder)
            )


def _delivery_values(d: WebhookDelivery) -> tuple[object, ...]:
    return (
        d.id,
        d.endpoint_id,
        d.event_id,
        d.event_type,
        d.subject,
        d.payload,
        d.state.value,
        d.attempts,
        iso_or_none(d.next_attempt_at),
        iso(d.created_at),
        iso_or_none(d.last_attempt_at),
        d.last_status,
        d.last_error,
        iso_or_none(d.finished_at),
        d.traceparent,
    )
