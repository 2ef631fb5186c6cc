"""The webhook tables on PostgreSQL (see `keel.service.webhook_ports.WebhookRepository`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from keel.domain.webhooks import WebhookDelivery, WebhookEndpoint
from keel.observability.database import DatabaseObserver
from keel.service.ports import OutboxRecord
from keel.service.webhook_ports import StoredEndpoint
from keel.storage.rows import OUTBOX_COLUMNS, outbox_record_from_row
from keel.storage.webhook_rows import (
    DELIVERY_COLUMNS,
    ENDPOINT_COLUMNS,
    MAX_DUE,
    WEBHOOK_LEASE,
    delivery_from_row,
    endpoint_from_row,
    endpoint_values,
)

# Generic only in the type stubs, so the alias must not be evaluated at run time.
_Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# Built from constants only; every value goes through a $n placeholder.
_SELECT_ENDPOINTS = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints"  # noqa: S608
_SELECT_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"  # noqa: S608
_DUE = f"""
SELECT {DELIVERY_COLUMNS} FROM (
  SELECT {DELIVERY_COLUMNS},
    row_number() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS place
  FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1
) AS due WHERE place <= $2 ORDER BY next_attempt_at, id LIMIT {MAX_DUE}
"""  # noqa: S608


def _time(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value


def _count(status: str) -> int:
    return int(status.split()[-1])


class PostgresWebhooks:
    def __init__(self, connection: _Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def add_endpoint(self, endpoint: WebhookEndpoint, sealed_secret: str) -> None:
        with self._observer.call("add_webhook_endpoint"):
            await self._db.execute(
                f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",  # noqa: S608
                *endpoint_values(endpoint, sealed_secret),
            )

    async def endpoints(self) -> list[StoredEndpoint]:
        with self._observer.call("webhook_endpoints"):
            rows = await self._db.fetch(_SELECT_ENDPOINTS + " ORDER BY created_at, id")
        return [endpoint_from_row(tuple(row), _time) for row in rows]

    async def endpoint(self, endpoint_id: str) -> StoredEndpoint | None:
        with self._observer.call("webhook_endpoint"):
            row = await self._db.fetchrow(_SELECT_ENDPOINTS + " WHERE id = $1", endpoint_id)
        return endpoint_from_row(tuple(row), _time) if row is not None else None

    async def replace_sealed_secret(self, endpoint_id: str, old: str, new: str) -> bool:
        with self._observer.call("reseal_webhook_secret"):
            status = await self._db.execute(
                "UPDATE webhook_endpoints SET sealed_secret = $1 WHERE id = $2 AND sealed_secret = $3",
                new,
                endpoint_id,
                old,
            )
        return bool(status == "UPDATE 1")

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        with self._observer.call("delete_webhook_endpoint"):
            # Its deliveries go with it (ON DELETE CASCADE).
            status = await self._db.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
        return _count(status) == 1

    async def events_to_fan_out(self, limit: int) -> list[OutboxRecord]:
        with self._observer.call("events_to_fan_out"):
            rows = await self._db.fetch(
                f"SELECT {OUTBOX_COLUMNS} FROM event_outbox WHERE fanned_out_at IS NULL"  # noqa: S608
                # Locked until this fan-out commits: an erasure rewriting these payloads waits,
                # then finds (and rewrites) the copies the fan-out made; one that rewrote them
                # first makes this read wait and return the erased forms. Without the lock, a
                # fan-out that read before an erasure committed would store the old payloads.
                " ORDER BY seq LIMIT $1 FOR UPDATE",
                limit,
            )
        return [outbox_record_from_row(tuple(row), _time) for row in rows]

    async def mark_fanned_out(self, seqs: Sequence[int], at: datetime) -> None:
        with self._observer.call("mark_events_fanned_out"):
            await self._db.execute(
                "UPDATE event_outbox SET fanned_out_at = $1 WHERE seq = ANY($2::bigint[])", at, list(seqs)
            )

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        d = delivery
        with self._observer.call("add_webhook_delivery"):
            await self._db.execute(
                f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS})"  # noqa: S608
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                " ON CONFLICT (endpoint_id, event_id) DO NOTHING",
                d.id,
                d.endpoint_id,
                d.event_id,
                d.event_type,
                d.subject,
                d.payload,
                d.state.value,
                d.attempts,
                d.next_attempt_at,
                d.created_at,
                d.last_attempt_at,
                d.last_status,
                d.last_error,
                d.finished_at,
                d.traceparent,
            )

    async def due_deliveries(self, now: datetime, per_endpoint: int) -> list[WebhookDelivery]:
        with self._observer.call("due_webhook_deliveries"):
            rows = await self._db.fetch(_DUE, now, per_endpoint)
        return [delivery_from_row(tuple(row), _time) for row in rows]

    async def hold(self, delivery_ids: Sequence[str], until: datetime) -> None:
        with self._observer.call("hold_webhook_deliveries"):
            await self._db.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = ANY($2::text[])",
                until,
                list(delivery_ids),
            )

    async def record_attempt(self, delivery: WebhookDelivery) -> None:
        with self._observer.call("record_webhook_attempt"):
            await self._db.execute(
                "UPDATE webhook_deliveries SET state = $1, attempts = $2, next_attempt_at = $3,"
                " last_attempt_at = $4, last_status = $5, last_error = $6, finished_at = $7 WHERE id = $8",
                delivery.state.value,
                delivery.attempts,
                delivery.next_attempt_at,
                delivery.last_attempt_at,
                delivery.last_status,
                delivery.last_error,
                delivery.finished_at,
                delivery.id,
            )

    async def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        with self._observer.call("webhook_delivery"):
            row = await self._db.fetchrow(_SELECT_DELIVERIES + " WHERE id = $1", delivery_id)
        return delivery_from_row(tuple(row), _time) if row is not None else None

    async def deliveries_of(self, endpoint_id: str, state: str, limit: int) -> list[WebhookDelivery]:
        with self._observer.call("webhook_deliveries_of"):
            rows = await self._db.fetch(
                _SELECT_DELIVERIES
                + " WHERE endpoint_id = $1 AND state = $2 ORDER BY created_at, id LIMIT $3",
                endpoint_id,
                state,
                limit,
            )
        return [delivery_from_row(tuple(row), _time) for row in rows]

    async def replay_dead(self, endpoint_id: str, delivery_ids: Sequence[str] | None, now: datetime) -> int:
        if delivery_ids is not None and not delivery_ids:
            return 0
        with self._observer.call("replay_webhook_dead_letters"):
            status = await self._db.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1,"
                " finished_at = NULL WHERE endpoint_id = $2 AND state = 'dead'"
                " AND ($3::text[] IS NULL OR id = ANY($3::text[]))",
                now,
                endpoint_id,
                list(delivery_ids) if delivery_ids is not None else None,
            )
        return _count(status)

    async def count_dead(self) -> int:
        with self._observer.call("count_webhook_dead_letters"):
            value = await self._db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'")
        return int(value or 0)

    async def prune_delivered(self, before: datetime) -> int:
        with self._observer.call("prune_webhook_deliveries"):
            status = await self._db.execute(
                "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished_at < $1", before
            )
        return _count(status)

    async def claim_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        with self._observer.call("claim_webhook_lease"):
            claimed = await self._db.fetchval(
                "INSERT INTO event_relay_lease (name, holder, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $3"
                " WHERE event_relay_lease.holder = $2 OR event_relay_lease.expires_at <= $4"
                " RETURNING 1",
                WEBHOOK_LEASE,
                holder,
                until,
                now,
            )
        return claimed is not None

    async def release_lease(self, holder: str) -> None:
        with self._observer.call("release_webhook_lease"):
            await self._db.execute(
                "DELETE FROM event_relay_lease WHERE name = $1 AND holder = $2", WEBHOOK_LEASE, holder
            )
