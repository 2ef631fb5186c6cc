"""Column lists and row conversions of the webhook tables, shared by both adapters."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from keel.domain.webhooks import DeliveryState, WebhookDelivery, WebhookEndpoint
from keel.service.webhook_ports import StoredEndpoint

WEBHOOK_LEASE = "webhook-dispatcher"  # its row in event_relay_lease
ENDPOINT_COLUMNS = "id, url, event_types, holds_personal_data, sealed_secret, created_at"
DELIVERY_COLUMNS = (
    "id, endpoint_id, event_id, event_type, subject, payload, state, attempts, next_attempt_at,"
    " created_at, last_attempt_at, last_status, last_error, finished_at, traceparent"
)
# Bounds one scan of due deliveries, whatever the number of endpoints.
MAX_DUE = 1000


def endpoint_from_row(row: Sequence[Any], parse_time: Callable[[Any], datetime]) -> StoredEndpoint:
    endpoint_id, url, event_types, holds_personal_data, sealed_secret, created_at = row
    return StoredEndpoint(
        WebhookEndpoint(
            id=endpoint_id,
            url=url,
            event_types=tuple(json.loads(event_types)),
            holds_personal_data=bool(holds_personal_data),
            created_at=parse_time(created_at),
        ),
        sealed_secret,
    )


def endpoint_values(endpoint: WebhookEndpoint, sealed_secret: str) -> tuple[Any, ...]:
    """In ENDPOINT_COLUMNS order; `created_at` as a datetime (SQLite formats it)."""
    return (
        endpoint.id,
        endpoint.url,
        json.dumps(list(endpoint.event_types)),
        endpoint.holds_personal_data,
        sealed_secret,
        endpoint.created_at,
    )


def delivery_from_row(row: Sequence[Any], parse_time: Callable[[Any], datetime]) -> WebhookDelivery:
    def maybe(value: Any) -> datetime | None:
        return parse_time(value) if value is not None else None

    return WebhookDelivery(
        id=row[0],
        endpoint_id=row[1],
        event_id=row[2],
        event_type=row[3],
        subject=row[4],
        payload=row[5],
        state=DeliveryState(row[6]),
        attempts=int(row[7]),
        next_attempt_at=maybe(row[8]),
        created_at=parse_time(row[9]),
        last_attempt_at=maybe(row[10]),
        last_status=row[11],
        last_error=row[12],
        finished_at=maybe(row[13]),
        traceparent=row[14],
    )
