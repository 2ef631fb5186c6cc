"""Erasure of a profile's personal data, as a saga run by a background runner.

The steps, in order (`keel.domain.erasure.ErasureStep`):
1. remove the personal data: the profile's rows go, its past events' payloads and stored
   idempotency outcomes are replaced by erased forms, a tombstone (id, time) stays;
2. drop every cached copy: this process's cache, and every other process's over the
   invalidation bus;
3. erase the event stream's copies: once every event of the profile is published (the relay
   may hold one read before step 1, which it publishes with the old payload), the stream's
   messages at the positions the outbox recorded are deleted (JetStream overwrites them). Done
   at once when Keel publishes to no stream;
4. publish `keel.profile.erased.v1`: written into the outbox, the relay takes it from there;
5. wait until every webhook endpoint registered as holding personal data that the event goes
   to acknowledged it by answering 2xx to its delivery (none: nothing to wait for; a dead
   letter stays pending until replayed and delivered, or its endpoint deleted);
6. finish.

Why a crash at any point resumes where it stopped: each step's effect and the timestamp that
marks it done commit in ONE transaction (the effects of steps 2 and 3 are outside the database,
and harmless to repeat), and a saga is leased to one runner at a time; a runner that dies lets the lease run
out and another (or the same process, restarted) takes the saga up at its first step not done.
A saving that finds the lease taken over rolls its step back, so two runners never both write
the erased event. A failing step is retried with exponential backoff; past `give_up_at` the saga
is FAILED, and its status says which steps were done and which holders never acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from keel.domain.api_keys import Principal
from keel.domain.erasure import (
    Erasure,
    ErasureState,
    ErasureStep,
    TombstoneCause,
)
from keel.domain.errors import Forbidden, KeelError
from keel.domain.events import profile_erased
from keel.domain.profile import JSONObject, JSONValue
from keel.service.ports import Clock, EventPublisher, PersonalDataStore, PersonalDataUnitOfWork


@dataclass(frozen=True, slots=True)
class ErasurePolicy:
    # Past this (from the request), a step still failing or a holder still silent fails the
    # saga. Longer than the webhooks' own retry period (a day), so that a holder that is only
    # down for a while acknowledges within it.
    give_up_after: timedelta = timedelta(days=2)
    lease: timedelta = timedelta(seconds=60)
    first_retry: timedelta = timedelta(seconds=1)
    max_retry: timedelta = timedelta(minutes=5)
    acknowledgement_poll: timedelta = timedelta(seconds=30)
    poll_seconds: float = 5.0  # how often a runner looks for due sagas when not woken
    batch: int = 10


def _ignore(*_: object) -> None:
    return None


@dataclass
class ErasureObserver:
    """What the runner reports; the composition root points these at logs and metrics."""

    step_done: Callable[[Erasure, ErasureStep], None] = _ignore
    step_failed: Callable[[Erasure, ErasureStep, str], None] = _ignore


class CachedCopiesNotDropped(Exception):
    """The other processes could not be told to drop their copies (the invalidation bus did not
    take the message): the step is retried."""


# Stream messages erased between two renewals of the saga's lease: each costs a read and a delete
# (each bounded by the publish timeout), so a profile with a long history cannot outlast the lease.
STREAM_ERASE_CHUNK = 20


class StreamCopiesPending(Exception):
    """Some of the profile's events are not yet published: their stream positions are unknown
    until the relay publishes them, so the step is retried."""


class LeaseLost(Exception):
    """Another runner took the saga over: this one's step must not commit."""


def require_admin(principal: Principal) -> None:
    # Checked before anything is looked up: a caller without admin learns nothing, not even
    # whether the profile exists.
    if not principal.is_admin:
        raise Forbidden("Only admin keys may export or erase personal data.")


@dataclass(frozen=True, slots=True)
class ErasureStatus:
    erasure: Erasure
    pending_holders: tuple[str, ...]

    def document(self) -> JSONObject:
        """The status resource, the same for every protocol."""
        e = self.erasure
        steps: list[JSONValue] = [
            {"name": step.value, "done": e.done_at(step) is not None, "done_at": _iso(e.done_at(step))}
            for step in ErasureStep
        ]
        holders: list[JSONValue] = list(self.pending_holders)
        return {
            "id": e.id,
            "profile_id": e.profile_id,
            "state": e.state.value,
            "requested_at": _iso(e.requested_at),
            "give_up_at": _iso(e.give_up_at),
            "finished_at": _iso(e.finished_at),
            "next_step": e.next_step.value if e.next_step is not None else None,
            "steps": steps,
            "pending_holders": holders,
            "attempts": e.attempts,
            "last_error": e.last_error,
            "next_attempt_at": _iso(e.next_attempt_at) if e.state is ErasureState.RUNNING else None,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value is not None else None


async def erasure_status(uow: PersonalDataUnitOfWork, erasure: Erasure) -> ErasureStatus:
    pending: list[str] = []
    if erasure.holders_recorded_at is not None and erasure.event_id is not None:
        pending = await uow.erasure_acknowledgements.pending(erasure.event_id)
    return ErasureStatus(erasure, tuple(pending))


def runner_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class ErasureSagaRunner:
    """Takes up due sagas (new, retrying, waiting on acknowledgements, or abandoned by a runner
    that died) and runs each as far as it can go now."""

    store: PersonalDataStore
    clock: Clock
    drop_cached: Callable[[str, int], Awaitable[None]]  # forget a profile here and fleet-wide
    stream: EventPublisher | None = None  # the event stream the relay publishes to, if any
    policy: ErasurePolicy = field(default_factory=ErasurePolicy)
    event_source: str = "/keel"
    on_events_committed: Callable[[], None] = _ignore
    observer: ErasureObserver = field(default_factory=ErasureObserver)
    holder: str = field(default_factory=runner_holder)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("keel.erasure")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Run due sagas until cancelled. A failed pass (the database away) is logged and the
        next one tried."""
        while True:
            try:
                await self.run_due()
            except Exception as error:  # noqa: BLE001 - the runner must outlive a database hiccup
                self._log.warning("erasure_pass_failed", error=type(error).__name__)
            try:
                async with asyncio.timeout(self.policy.poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_due(self) -> int:
        """One pass: lease the due sagas and advance each as far as it goes; how many."""
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            due = await uow.erasures.claim_due(self.holder, now, now + self.policy.lease, self.policy.batch)
            await uow.commit()
        for erasure in due:
            await self._advance(erasure)
        return len(due)

    async def _advance(self, erasure: Erasure) -> None:
        while erasure.state is ErasureState.RUNNING:
            step = erasure.next_step
            if step is None:  # cannot happen: FINISH completes the saga
                return
            try:
                advanced = await self._run_step(step, erasure)
            except LeaseLost:
                return
            except Exception as error:  # noqa: BLE001 - a failing step is retried, not raised
                await self._failed(erasure, step, error)
                return
            if advanced is None:
                return  # waiting (for acknowledgements): rescheduled
            erasure = advanced
            self.observer.step_done(erasure, step)
            self._log.info("erasure_step_done", erasure=erasure.id, step=step.value)

    async def _run_step(self, step: ErasureStep, erasure: Erasure) -> Erasure | None:
        match step:
            case ErasureStep.REMOVE_PERSONAL_DATA:
                return await self._remove_personal_data(erasure)
            case ErasureStep.DROP_CACHED_COPIES:
                assert erasure.erased_version is not None
                await self.drop_cached(erasure.profile_id, erasure.erased_version)
                return await self._save(replace(erasure, caches_dropped_at=self.clock.now()))
            case ErasureStep.ERASE_STREAM_COPIES:
                return await self._erase_stream_copies(erasure)
            case ErasureStep.PUBLISH_ERASED_EVENT:
                return await self._publish(erasure)
            case ErasureStep.AWAIT_ACKNOWLEDGEMENTS:
                return await self._await_acknowledgements(erasure)
            case ErasureStep.FINISH:
                now = self.clock.now()
                return await self._save(replace(erasure, finished_at=now, state=ErasureState.COMPLETED))

    async def _remove_personal_data(self, erasure: Erasure) -> Erasure:
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            version = await uow.personal_data.remove(erasure.profile_id, now, TombstoneCause.ERASURE)
            if version is None:
                # Removed before (a purge, or this step in a run whose marking was lost): the
                # tombstone knows the last version.
                tombstone = await uow.personal_data.tombstone(erasure.profile_id)
                version = tombstone.last_version if tombstone is not None else 0
            done = self._progressed(erasure, data_removed_at=now, erased_version=version + 1)
            await self._store_in(uow, done)
            await uow.commit()
        return done

    async def _erase_stream_copies(self, erasure: Erasure) -> Erasure:
        if self.stream is not None:
            async with self.store.unit_of_work(read_only=True) as uow:
                copies = await uow.outbox.stream_copies(erasure.profile_id)
            if copies.unpublished:
                raise StreamCopiesPending(f"{copies.unpublished} of the profile's events not yet published")
            for start in range(0, len(copies.positions), STREAM_ERASE_CHUNK):
                await self.stream.erase(copies.positions[start : start + STREAM_ERASE_CHUNK])
                await self._save(erasure)  # renews the lease between chunks (LeaseLost: taken over)
        return await self._save(replace(erasure, stream_copies_erased_at=self.clock.now()))

    async def _publish(self, erasure: Erasure) -> Erasure:
        version, erased_at = erasure.erased_version, erasure.data_removed_at
        assert version is not None
        assert erased_at is not None
        event = profile_erased(erasure.profile_id, version, erased_at, erasure.id)
        async with self.store.unit_of_work() as uow:
            await uow.outbox.add(event, self.event_source)
            done = self._progressed(erasure, event_id=event.id, event_written_at=self.clock.now())
            await self._store_in(uow, done)
            await uow.commit()
        self.on_events_committed()
        return done

    async def _await_acknowledgements(self, erasure: Erasure) -> Erasure | None:
        event_id = erasure.event_id
        assert event_id is not None
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            if erasure.holders_recorded_at is None:
                # Once: the personal-data endpoints the event goes to owe the acknowledgement;
                # one registered later never receives it and owes nothing.
                assert erasure.data_removed_at is not None  # the erased event's time
                await uow.erasure_acknowledgements.expect(event_id, erasure.data_removed_at, now)
                erasure = replace(erasure, holders_recorded_at=now)
            # Their 2xx deliveries of the event since the last check are the acknowledgements.
            await uow.erasure_acknowledgements.acknowledge_delivered(event_id)
            pending = await uow.erasure_acknowledgements.pending(event_id)
            if not pending:
                erasure = self._progressed(erasure, acknowledged_at=now)
                await self._store_in(uow, erasure)
                await uow.commit()
                return erasure
            waiting = f"no acknowledgement yet from {', '.join(pending)}"
            if now >= erasure.give_up_at:
                erasure = replace(erasure, state=ErasureState.FAILED, last_error=waiting)
                self._log.warning("erasure_gave_up", erasure=erasure.id, pending=len(pending))
            else:
                erasure = replace(
                    erasure, next_attempt_at=now + self.policy.acknowledgement_poll, last_error=waiting
                )
            await self._store_in(uow, erasure)
            await uow.commit()
        return None

    def _progressed(self, erasure: Erasure, **changes: object) -> Erasure:
        done: Erasure = replace(erasure, attempts=0, last_error=None, **changes)  # type: ignore[arg-type]
        return done

    async def _save(self, erasure: Erasure) -> Erasure:
        async with self.store.unit_of_work() as uow:
            await self._store_in(uow, erasure)
            await uow.commit()
        return erasure

    async def _store_in(self, uow: PersonalDataUnitOfWork, erasure: Erasure) -> None:
        if not await uow.erasures.save(erasure, self.holder, self.clock.now() + self.policy.lease):
            raise LeaseLost(erasure.id)  # leaving the block without commit rolls the step back

    async def _failed(self, erasure: Erasure, step: ErasureStep, error: Exception) -> None:
        now = self.clock.now()
        attempts = erasure.attempts + 1
        delay = min(self.policy.first_retry * 2 ** (attempts - 1), self.policy.max_retry)
        # The kind of error only: a message could quote the data being erased.
        reason = f"{step.value} failed: {type(error).__name__}"
        if isinstance(error, KeelError):
            reason += f" ({error.detail})"
        failed = replace(
            erasure,
            attempts=attempts,
            next_attempt_at=now + delay,
            last_error=reason,
            state=ErasureState.FAILED if now >= erasure.give_up_at else ErasureState.RUNNING,
        )
        self.observer.step_failed(erasure, step, reason)
        self._log.warning(
            "erasure_step_failed", erasure=erasure.id, step=step.value, error=type(error).__name__
        )
        try:
            await self._save(failed)
        except Exception as saving:  # noqa: BLE001 - the lease runs out and the step is retried
            self._log.warning("erasure_state_not_saved", erasure=erasure.id, error=type(saving).__name__)
