"""The webhook dispatcher: turns outbox events into deliveries and delivers them, signed, to the
registered endpoints, retrying on the schedule until a 2xx or the schedule runs out.

Guarantees, and why they hold:
- Fed from the outbox, never from a request: a profile write only inserts its event; the
  dispatcher fans each event out to the endpoints that want it (one delivery row per endpoint,
  inserted in the same transaction as the event's fan-out mark), so nothing is lost between.
- A slow or dead endpoint never holds up another: each endpoint has at most `per_endpoint`
  attempts in flight, the database hands out due deliveries per endpoint (one endpoint's
  backlog cannot fill a batch), every attempt is bounded by `attempt_timeout_seconds`, and
  attempts run as tasks of their own, apart from the pass that starts them.
- A restart resumes: the delivery state (attempts, next attempt time, outcome) is in the
  database. An attempt in flight holds its delivery for twice its timeout (plus a margin); a
  process that dies mid-attempt leaves it due again after that, so it is attempted again
  (at least once: receivers deduplicate by `webhook-id`, the event id).
- One dispatcher at a time: it works while it holds a lease row (`event_relay_lease`, name
  `webhook-dispatcher`), renewed every pass, given back on stop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog
from opentelemetry.trace import SpanKind, Tracer

from keel.domain.webhooks import (
    DEFAULT_DELAYS_SECONDS,
    DeliveryState,
    RetrySchedule,
    WebhookDelivery,
    new_delivery_id,
)
from keel.observability.tracing import PropagatingTracer, context_of, traceparent_of
from keel.service.outbox import cloud_event, relay_holder
from keel.service.ports import Clock, Store
from keel.service.wakeups import woken_or_polled
from keel.service.webhook_ports import (
    AddressResolver,
    SecretBox,
    SecretUnreadable,
    SendResult,
    StoredEndpoint,
    WebhookSender,
)
from keel.service.webhook_signing import signed_headers
from keel.service.webhook_targets import refused_address


def _default_schedule() -> RetrySchedule:
    return RetrySchedule(tuple(timedelta(seconds=s) for s in DEFAULT_DELAYS_SECONDS))


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    schedule: RetrySchedule = field(default_factory=_default_schedule)
    attempt_timeout_seconds: float = 10.0
    per_endpoint: int = 4  # attempts in flight per endpoint
    fan_out_batch: int = 200
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    retention: timedelta = timedelta(days=7)  # delivered rows are pruned after this
    prune_every: timedelta = timedelta(minutes=1)
    allow_private_targets: bool = False

    @property
    def hold(self) -> timedelta:
        """How long an attempt in flight keeps its delivery from being started again."""
        return timedelta(seconds=2 * self.attempt_timeout_seconds + 5)


def _ignore(*_: object) -> None:
    return None


@dataclass
class DispatchObserver:
    """What the dispatcher reports; the composition root points these at the metrics."""

    attempted: Callable[[str, float], None] = _ignore  # outcome (delivered/failed/dead), seconds
    dead_letters: Callable[[int], None] = _ignore
    failed: Callable[[str], None] = _ignore  # "fan_out", "dispatch", "attempt", "record"
    leader: Callable[[bool], None] = _ignore


LEASE_HOLDER_PREFIX = "webhooks:"


@dataclass
class WebhookDispatcher:
    store: Store
    sender: WebhookSender
    box: SecretBox
    resolver: AddressResolver
    clock: Clock
    policy: DispatchPolicy = field(default_factory=DispatchPolicy)
    observer: DispatchObserver = field(default_factory=DispatchObserver)
    rng: random.Random = field(default_factory=random.Random)
    holder: str = field(default_factory=lambda: LEASE_HOLDER_PREFIX + relay_holder())
    timer: Callable[[], float] = time.perf_counter
    # Each attempt is a span in the trace of the change that wrote the event.
    tracer: Tracer = field(default_factory=PropagatingTracer)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._leading = False
        self._in_flight: dict[str, set[asyncio.Task[None]]] = {}
        self._pruned_at: datetime | None = None
        self._log = structlog.get_logger("keel.webhooks")

    def wake(self) -> None:
        """Events were committed, a dead letter replayed or an attempt finished: look now."""
        self._wake.set()

    @property
    def leading(self) -> bool:
        return self._leading

    def in_flight(self, endpoint_id: str) -> int:
        return len(self._in_flight.get(endpoint_id, ()))

    def attempts_of(self, endpoint_id: str) -> list[asyncio.Task[None]]:
        """The endpoint's attempts in flight (to wait on one endpoint's, as tests do)."""
        return list(self._in_flight.get(endpoint_id, ()))

    async def run(self) -> None:
        """Dispatch until cancelled; cancels the attempts in flight and gives the lease back."""
        try:
            while True:
                more = await self.run_once()
                if not more:
                    await woken_or_polled(self._wake, self.policy.poll_seconds)
        finally:
            await self.stop()

    async def run_once(self) -> bool:
        """One pass: hold the lease, fan out new events, start the due attempts, prune. True
        when more events may be waiting to fan out."""
        try:
            if not await self._claim():
                return False
        except Exception as error:  # noqa: BLE001 - the dispatcher must outlive a database hiccup
            self._failed("dispatch", error)
            return False
        more = False
        try:
            more = await self._fan_out()
        except Exception as error:  # noqa: BLE001 - retried next pass; the events stay unmarked
            self._failed("fan_out", error)
        try:
            await self._start_due()
            await self._prune_if_due()
        except Exception as error:  # noqa: BLE001 - retried next pass
            self._failed("dispatch", error)
        return more

    async def settle(self) -> None:
        """Wait until no attempt is in flight (tests, and a graceful stop)."""
        while tasks := [t for ts in self._in_flight.values() for t in ts]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel the attempts in flight (their deliveries are due again once their hold
        passes) and give the lease back."""
        tasks = [t for ts in self._in_flight.values() for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._leading:
            return
        self._leading = False
        self.observer.leader(False)
        try:
            async with asyncio.timeout(2.0):
                async with self.store.unit_of_work() as uow:
                    await uow.webhooks.release_lease(self.holder)
                    await uow.commit()
        except Exception:  # noqa: BLE001, S110 - the lease expires on its own
            pass

    def _failed(self, stage: str, error: BaseException) -> None:
        self.observer.failed(stage)
        self._log.warning("webhook_dispatch_failed", stage=stage, error=type(error).__name__)

    async def _claim(self) -> bool:
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            held = await uow.webhooks.claim_lease(
                self.holder, now, now + timedelta(seconds=self.policy.lease_seconds)
            )
            await uow.commit()
        if held != self._leading:
            self._leading = held
            self.observer.leader(held)
            self._log.info("webhook_dispatcher_lease", holder=self.holder, held=held)
        return held

    async def _fan_out(self) -> bool:
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            events = await uow.webhooks.events_to_fan_out(self.policy.fan_out_batch)
            if not events:
                return False
            endpoints = [stored.endpoint for stored in await uow.webhooks.endpoints()]
            for record in events:
                event = record.event
                wanting = [e for e in endpoints if e.wants(event.type, event.time)]
                if not wanting:
                    continue
                payload = json.dumps(cloud_event(record), separators=(",", ":"))
                for endpoint in wanting:
                    await uow.webhooks.add_delivery(
                        WebhookDelivery(
                            id=new_delivery_id(),
                            endpoint_id=endpoint.id,
                            event_id=event.id,
                            event_type=event.type,
                            subject=event.subject,
                            payload=payload,
                            state=DeliveryState.PENDING,
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                            traceparent=record.traceparent,
                        )
                    )
            await uow.webhooks.mark_fanned_out([record.seq for record in events], now)
            await uow.commit()
        return len(events) == self.policy.fan_out_batch

    async def _start_due(self) -> None:
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            due = await uow.webhooks.due_deliveries(now, self.policy.per_endpoint)
            if not due:
                return
            endpoints = {stored.endpoint.id: stored for stored in await uow.webhooks.endpoints()}
            starting: list[tuple[StoredEndpoint, WebhookDelivery]] = []
            free = {eid: self.policy.per_endpoint - self.in_flight(eid) for eid in endpoints}
            for delivery in due:
                stored = endpoints.get(delivery.endpoint_id)
                if stored is None or free[delivery.endpoint_id] <= 0:
                    continue
                free[delivery.endpoint_id] -= 1
                starting.append((stored, delivery))
            if not starting:
                return
            await uow.webhooks.hold([d.id for _, d in starting], now + self.policy.hold)
            await uow.commit()
        for stored, delivery in starting:
            task = asyncio.create_task(self._attempt(stored, delivery))
            tasks = self._in_flight.setdefault(stored.endpoint.id, set())
            tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, stored.endpoint.id))

    def _finished(self, endpoint_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._in_flight.get(endpoint_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._in_flight[endpoint_id]
        self._wake.set()  # a slot is free: its endpoint's next due delivery may start

    async def _send(
        self, stored: StoredEndpoint, delivery: WebhookDelivery, traceparent: str | None
    ) -> SendResult:
        url = stored.endpoint.url
        host = self.sender.host_of(url)
        if host is None:
            return SendResult(None, "invalid_url")  # stored before registration refused it
        if not self.policy.allow_private_targets:
            # Again at every attempt: the name may resolve elsewhere since registration.
            try:
                if await refused_address(host, self.resolver) is not None:
                    return SendResult(None, "refused_address")
            except OSError:
                return SendResult(None, "connection")
        try:
            secret = self.box.open(stored.sealed_secret)
        except SecretUnreadable:
            return SendResult(None, "secret_unreadable")
        body = delivery.payload.encode()
        timestamp = int(self.clock.now().timestamp())
        headers = signed_headers(secret, delivery.event_id, timestamp, body)
        if traceparent is not None:
            headers["traceparent"] = traceparent
        return await self.sender.send(url, headers, body, self.policy.attempt_timeout_seconds)

    async def _attempt(self, stored: StoredEndpoint, delivery: WebhookDelivery) -> None:
        started = self.timer()
        with self.tracer.start_as_current_span(
            "keel.webhooks deliver",
            context=context_of(delivery.traceparent),
            kind=SpanKind.CLIENT,
            attributes={
                "keel.webhook.endpoint": stored.endpoint.id,
                "keel.webhook.attempt": delivery.attempts + 1,
                "messaging.message.id": delivery.event_id,
            },
        ) as span:
            try:
                result = await self._send(stored, delivery, traceparent_of(span))
            except Exception as raised:  # noqa: BLE001 - recorded as a failed attempt, never lost
                self._failed("attempt", raised)
                result = SendResult(None, "error")
            if result.status is not None:
                span.set_attribute("http.response.status_code", result.status)
            if result.error is not None:
                span.set_attribute("error.type", result.error)
        elapsed = self.timer() - started
        now = self.clock.now()
        attempts = delivery.attempts + 1
        tried = replace(delivery, attempts=attempts, last_attempt_at=now, last_status=result.status)
        if result.status is not None and 200 <= result.status < 300:
            outcome = "delivered"
            done = replace(
                tried, state=DeliveryState.DELIVERED, next_attempt_at=None, finished_at=now, last_error=None
            )
        else:
            error = result.error or "status"
            wait = self.policy.schedule.after_failure(attempts, self.rng)
            if wait is None:
                outcome = "dead"
                done = replace(
                    tried, state=DeliveryState.DEAD, next_attempt_at=None, finished_at=now, last_error=error
                )
            else:
                outcome = "failed"
                done = replace(tried, next_attempt_at=now + wait, last_error=error)
        try:
            async with self.store.unit_of_work() as uow:
                await uow.webhooks.record_attempt(done)
                await uow.commit()
        except Exception as error:  # noqa: BLE001 - its hold passes and it is attempted again
            self._failed("record", error)
            return
        self.observer.attempted(outcome, elapsed)
        if outcome == "dead":
            self._log.warning(
                "webhook_dead_letter",
                endpoint=stored.endpoint.id,
                delivery=delivery.id,
                attempts=attempts,
                error=done.last_error,
                status=result.status,
            )

    async def _prune_if_due(self) -> None:
        now = self.clock.now()
        if self._pruned_at is not None and now - self._pruned_at < self.policy.prune_every:
            return
        async with self.store.unit_of_work() as uow:
            pruned = await uow.webhooks.prune_delivered(now - self.policy.retention)
            dead = await uow.webhooks.count_dead()
            await uow.commit()
        self._pruned_at = now
        self.observer.dead_letters(dead)
        if pruned:
            self._log.info("webhook_deliveries_pruned", count=pruned)
