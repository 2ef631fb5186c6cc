"""The outbox relay: publishes the events committed with each change to the event bus, in
`seq` order, at least once, and forgets them after a retention period.

Guarantees, and why they hold:
- Nothing committed is lost: an event leaves the outbox only once the bus acknowledged it
  (`published_at` is set after the acknowledgement, pruning only removes published rows).
- No duplicate a consumer can see, when the relay dies between publishing and marking: every
  publish carries the event id as its message id, and the bus drops a message id it already has
  within its duplicate window; the next relay republishes the unmarked rows and they are dropped.
- One publisher at a time: a relay publishes only while it holds the lease row, renewed every
  pass and given up when it stops; a batch stops early once half the lease has gone, so it
  never outlives it. A relay that dies leaves the lease to expire: another takes over after at
  most `lease_seconds`.
- Order per profile: the writes of one profile are serialized by its row (version check), so its
  events get increasing `seq`, and the one relay publishes in `seq` order, one at a time,
  stopping at the first failure.
- The bus down costs writes nothing: the relay's failures stay in the relay (logged, counted,
  retried after `poll_seconds`) while the outbox absorbs the changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from opentelemetry.trace import SpanKind, Tracer

from keel.domain.events import DomainEvent
from keel.observability.tracing import PropagatingTracer, context_of, traceparent_of
from keel.service.ports import Clock, EventPublisher, EventPublishFailed, OutboxRecord, Store
from keel.service.wakeups import woken_or_polled

SPEC_VERSION = "1.0"


def cloud_event(record: OutboxRecord) -> dict[str, Any]:
    """The CloudEvents 1.0 JSON form of a stored event (structured mode)."""
    event = record.event
    return {
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": record.source,
        "type": event.type,
        "subject": event.subject,
        "time": event.time.isoformat(timespec="microseconds"),
        "datacontenttype": "application/json",
        "data": event.data,
    }


def bus_subject(prefix: str, event: DomainEvent) -> str:
    """`keel.profile.updated.v1` is published on `<prefix>.profile.updated.v1`."""
    return f"{prefix}.{event.type.removeprefix('keel.')}"


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    subject_prefix: str = "keel.events"
    batch_size: int = 100
    lease_seconds: float = 5.0
    poll_seconds: float = 0.5
    retention: timedelta = timedelta(days=7)
    prune_every: timedelta = timedelta(minutes=1)


def _ignore(*_: object) -> None:
    return None


@dataclass
class RelayObserver:
    """What the relay reports; the composition root points these at the metrics."""

    published: Callable[[float], None] = _ignore  # lag in seconds, from the change to the ack
    depth: Callable[[int], None] = _ignore
    failed: Callable[[str], None] = _ignore  # "publish" or "database"
    leader: Callable[[bool], None] = _ignore


def relay_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class OutboxRelay:
    store: Store
    publisher: EventPublisher
    clock: Clock
    policy: RelayPolicy = field(default_factory=RelayPolicy)
    observer: RelayObserver = field(default_factory=RelayObserver)
    holder: str = field(default_factory=relay_holder)
    # Each publish is a span in the trace of the change that wrote the event.
    tracer: Tracer = field(default_factory=PropagatingTracer)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._leading = False
        self._pruned_at: datetime | None = None
        self._log = structlog.get_logger("keel.outbox")

    def wake(self) -> None:
        """A change was committed in this process: publish it now rather than at the next poll."""
        self._wake.set()

    @property
    def leading(self) -> bool:
        return self._leading

    async def run(self) -> None:
        """Relay until cancelled; gives the lease back on the way out."""
        try:
            while True:
                more = await self.run_once()
                if not more:
                    await woken_or_polled(self._wake, self.policy.poll_seconds)
        finally:
            await self._give_up_lease()

    async def run_once(self) -> bool:
        """One pass: hold the lease, publish a batch, prune. True when more events may be
        waiting (a full batch went out), so the caller goes on without waiting."""
        try:
            if not await self._claim():
                return False
            try:
                published, full = await self._publish_batch()
            except EventPublishFailed as error:
                self.observer.failed("publish")
                self._log.warning("outbox_publish_failed", error=str(error))
                published, full = 0, False
            # Pruning what was published goes on while the bus is down.
            await self._prune_if_due()
            if not full:
                await self._report_depth()
            return full and published > 0
        except Exception as error:  # noqa: BLE001 - the relay must outlive a database hiccup
            self.observer.failed("database")
            self._log.warning("outbox_relay_failed", error=type(error).__name__)
        return False

    async def _claim(self) -> bool:
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            held = await uow.outbox.claim_relay_lease(
                self.holder, now, now + timedelta(seconds=self.policy.lease_seconds)
            )
            await uow.commit()
        if held != self._leading:
            self._leading = held
            self.observer.leader(held)
            self._log.info("outbox_relay_lease", holder=self.holder, held=held)
        self._claimed_at = now
        return held

    async def _publish_batch(self) -> tuple[int, bool]:
        async with self.store.unit_of_work(read_only=True) as uow:
            batch = await uow.outbox.unpublished(self.policy.batch_size)
        half_lease = timedelta(seconds=self.policy.lease_seconds / 2)
        done: list[tuple[int, int | None]] = []
        try:
            for record in batch:
                if self.clock.now() - self._claimed_at > half_lease:
                    break  # renew the lease before going on
                payload = json.dumps(cloud_event(record), separators=(",", ":")).encode()
                subject = bus_subject(self.policy.subject_prefix, record.event)
                with self.tracer.start_as_current_span(
                    "keel.events publish",
                    context=context_of(record.traceparent),
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "nats",
                        "messaging.destination.name": subject,
                        "messaging.message.id": record.event.id,
                    },
                ) as span:
                    position = await self.publisher.publish(
                        subject, record.event.id, payload, traceparent_of(span)
                    )
                done.append((record.seq, position))
                self.observer.published((self.clock.now() - record.event.time).total_seconds())
        finally:
            if done:
                # Also after a failure part-way: what was acknowledged is not published again
                # (if this marking fails, it is, and the bus drops it as a duplicate).
                async with self.store.unit_of_work() as uow:
                    await uow.outbox.mark_published(done, self.clock.now())
                    await uow.commit()
        return len(done), len(batch) == self.policy.batch_size and len(done) == len(batch)

    async def _prune_if_due(self) -> None:
        now = self.clock.now()
        if self._pruned_at is not None and now - self._pruned_at < self.policy.prune_every:
            return
        async with self.store.unit_of_work() as uow:
            pruned = await uow.outbox.prune_published(now - self.policy.retention)
            await uow.commit()
        self._pruned_at = now
        if pruned:
            self._log.info("outbox_pruned", count=pruned)

    async def _report_depth(self) -> None:
        async with self.store.unit_of_work(read_only=True) as uow:
            self.observer.depth(await uow.outbox.depth())

    async def _give_up_lease(self) -> None:
        if not self._leading:
            return
        self._leading = False
        self.observer.leader(False)
        try:
            async with asyncio.timeout(2.0):
                async with self.store.unit_of_work() as uow:
                    await uow.outbox.release_relay_lease(self.holder)
                    await uow.commit()
        except Exception:  # noqa: BLE001, S110 - the lease expires on its own
            pass
