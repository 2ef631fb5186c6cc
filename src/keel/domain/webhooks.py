"""Webhook endpoints and their deliveries: what an operator registered, and where each event
stands on its way to each endpoint. Standard library only.

A delivery is one event for one endpoint. It is `pending` until the endpoint answers 2xx
(`delivered`) or the retry schedule runs out (`dead`: a dead letter, which an admin can list and
replay, making it `pending` again with a fresh schedule).
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

_ENDPOINT_ID = re.compile(r"whep_[0-9a-f]{32}")
_DELIVERY_ID = re.compile(r"whdl_[0-9a-f]{32}")


def new_endpoint_id() -> str:
    return f"whep_{uuid.uuid4().hex}"


def new_delivery_id() -> str:
    return f"whdl_{uuid.uuid4().hex}"


def is_endpoint_id(value: str) -> bool:
    """Whether `value` has the shape of an endpoint id (anything else names no endpoint)."""
    return _ENDPOINT_ID.fullmatch(value) is not None


def is_delivery_id(value: str) -> bool:
    return _DELIVERY_ID.fullmatch(value) is not None


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    url: str
    # The event types delivered here; empty: every type.
    event_types: tuple[str, ...]
    # Consumers holding personal data acknowledge `keel.profile.erased.v1` (the erasure saga
    # waits for their 2xx).
    holds_personal_data: bool
    created_at: datetime

    def wants(self, event_type: str, event_time: datetime) -> bool:
        """Whether an event goes to this endpoint: one of its types, and not older than the
        endpoint (a new endpoint does not receive the history)."""
        return (not self.event_types or event_type in self.event_types) and event_time >= self.created_at


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: str
    endpoint_id: str
    event_id: str  # also the `webhook-id` header: the same on every attempt, receivers dedupe by it
    event_type: str
    subject: str  # the profile (or key) the event is about: erasure finds payloads by it
    payload: str  # the CloudEvent JSON, sent byte for byte as the body
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None  # set while pending
    created_at: datetime
    last_attempt_at: datetime | None = None
    last_status: int | None = None  # the endpoint's HTTP status, None when it gave none
    last_error: str | None = None  # "timeout", "connection", "status", "refused_address"
    finished_at: datetime | None = None  # delivered or dead at
    traceparent: str | None = None  # the W3C traceparent of the change that wrote the event


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The wait before each retry: `delays[n]` after the (n+1)th failed attempt, each stretched
    or shortened at random by up to `jitter` (a fraction) so that the deliveries that failed
    together (an endpoint's outage) do not all come back at once. After the last delay's
    retry fails, the delivery is dead."""

    delays: Sequence[timedelta]
    jitter: float = 0.2

    @property
    def attempts(self) -> int:
        """How many attempts a delivery gets in all."""
        return len(self.delays) + 1

    def after_failure(self, attempts: int, rng: random.Random) -> timedelta | None:
        """The wait after the `attempts`th attempt failed; None when that was the last."""
        if attempts > len(self.delays):
            return None
        base = self.delays[attempts - 1]
        factor = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return timedelta(microseconds=int(base / timedelta(microseconds=1) * factor))


# About a day in all (21.7 h plus jitter), the first retries soon after the failure.
DEFAULT_DELAYS_SECONDS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 21600, 28800)
