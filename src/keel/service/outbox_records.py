"""A stored event as the outbox returns it: its own module because both the unit-of-work ports
(`keel.service.ports`) and the webhook ports read it, and those two must not import each other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keel.domain.events import DomainEvent


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A stored event. `seq` orders the outbox (and a profile's events, whose writes are
    serialized by the profile row); `source` is kept per row so past events keep theirs."""

    seq: int
    event: DomainEvent
    source: str
    published_at: datetime | None
    # The W3C traceparent of the change that wrote the event (None: written outside any trace).
    traceparent: str | None = None
