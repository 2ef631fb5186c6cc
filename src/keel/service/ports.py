"""The ports the use cases depend on. Adapters in `keel.storage` implement them.

Repositories work on whole aggregates: a later denormalized (document) layout must be able to
implement the same protocols without any use case changing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from keel.domain.api_keys import ApiKey, AuditEntry
from keel.domain.end_users import EndUser, LinkOutcome
from keel.domain.erasure import Erasure, Tombstone, TombstoneCause
from keel.domain.events import DomainEvent
from keel.domain.profile import Profile
from keel.service.outbox_records import OutboxRecord as OutboxRecord  # re-exported: adapters name it here

if TYPE_CHECKING:
    from keel.service.webhook_ports import WebhookRepository


@dataclass(frozen=True, slots=True)
class ProfileQuery:
    """Filters for listing live profiles, newest id last; `after_id` is the keyset cursor."""

    limit: int
    handle: str | None = None
    email: str | None = None
    ids: tuple[str, ...] | None = None
    after_id: str | None = None


class ProfileRepository(Protocol):
    async def get(self, profile_id: str) -> Profile | None:
        """The live profile with this id, or None (also None when soft-deleted)."""
        ...

    async def find(self, query: ProfileQuery) -> list[Profile]:
        """Live profiles matching `query`, ordered by id, at most `query.limit`."""
        ...

    async def add(self, profile: Profile) -> None:
        """Store a new profile. Raises `Conflict` when its handle or an email is taken."""
        ...

    async def update(self, profile: Profile, expected_version: int) -> None:
        """Replace the stored aggregate, if its stored version is still `expected_version`.

        Raises `VersionMismatch` when another write got there first and `Conflict` on a taken
        handle or email. A profile with `deleted_at` set releases its handle and emails.
        """
        ...


class IdempotencyState(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    scope: str
    key: str
    fingerprint: str
    state: IdempotencyState
    outcome: str | None
    locked_until: datetime
    expires_at: datetime


class IdempotencyRecords(Protocol):
    async def reserve(self, record: IdempotencyRecord, now: datetime) -> IdempotencyRecord | None:
        """Insert `record` (state IN_PROGRESS) unless a live one holds the key.

        Returns None when the caller now owns the key, including when it took over an expired
        record or an abandoned reservation (lease past `locked_until`), else the record in place.
        """
        ...

    async def complete(self, scope: str, key: str, fingerprint: str, outcome: str) -> bool:
        """Store the outcome of the reservation made for `fingerprint`, if it is still in
        progress; False when it was taken over meanwhile. Run it in the write's transaction."""
        ...

    async def release(self, scope: str, key: str) -> None:
        """Forget a reservation whose request failed without a result worth replaying."""
        ...

    async def purge_expired(self, now: datetime) -> int: ...


class ApiKeyRepository(Protocol):
    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def by_verifier(self, verifier: str) -> ApiKey | None:
        """The key whose current or previous verifier is `verifier` (each unique), revoked,
        expired or not: the caller checks which matched and whether it is still usable."""
        ...

    async def get_for_update(self, key_id: str) -> ApiKey | None:
        """`get`, and no other transaction changes the key until this one ends (a write unit's
        read-modify-write: a revocation never lost to a concurrent change)."""
        ...

    async def update(self, key: ApiKey) -> None:
        """Store what may change of the key `key.id`: name, scopes, plan, secret (current and
        previous, with their expiries), revocation."""
        ...

    async def list_all(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke(self, key_id: str, at: datetime) -> bool:
        """Mark a live key revoked; False when there is no such live key."""
        ...


class AuditLog(Protocol):
    """Admin actions, appended in the action's own transaction, never changed."""

    async def add(self, entry: AuditEntry) -> None: ...

    async def entries(self, *, limit: int, before: int | None, subject: str | None) -> list[AuditEntry]:
        """Newest first: up to `limit` entries with `seq` below `before` (None: the newest), of
        `subject` only when given."""
        ...


class Outbox(Protocol):
    """The events table, written in the change's transaction; read and marked by the relay.

    Payloads (`data`) are kept apart from the envelope columns so that a later erasure can
    replace a profile's past payloads (found by `subject`) with a tombstone."""

    async def add(self, event: DomainEvent, source: str) -> None: ...

    async def unpublished(self, limit: int) -> list[OutboxRecord]:
        """The oldest events not yet marked published, in `seq` order."""
        ...

    async def mark_published(self, published: list[tuple[int, int | None]], at: datetime) -> None:
        """Mark events published: (`seq`, the stream position the bus acknowledged it at, None
        when the bus gave none)."""
        ...

    async def stream_copies(self, subject: str) -> StreamCopies:
        """Where the events of `subject` (a profile) sit in the event stream."""
        ...

    async def read_from(self, seq: int, limit: int) -> list[OutboxRecord]:
        """Events with `seq` >= `seq`, published or not, in `seq` order (for `keel events tail`)."""
        ...

    async def depth(self) -> int:
        """How many events wait to be published."""
        ...

    async def prune_published(self, before: datetime) -> int:
        """Forget events published before `before`; returns how many."""
        ...

    async def claim_relay_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        """Take or renew the one relay lease: True when `holder` now holds it until `until`
        (it was free, expired at `now`, or already `holder`'s)."""
        ...

    async def release_relay_lease(self, holder: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DisclosedEvent:
    """One of a profile's events as Keel delivered it (or tried to) to a webhook endpoint: who
    received the profile's data, for an export."""

    endpoint_id: str
    endpoint_url: str
    event_id: str
    event_type: str
    state: str  # pending, delivered, dead
    attempts: int
    last_attempt_at: datetime | None
    finished_at: datetime | None


class PersonalData(Protocol):
    """Everything Keel stores about one profile, across tables: read whole for an export, removed
    whole (down to a tombstone) by an erasure or the retention purge."""

    async def profile_any_state(self, profile_id: str) -> Profile | None:
        """The stored profile, soft-deleted or not; None when absent (or already removed)."""
        ...

    async def events_of(self, profile_id: str) -> list[OutboxRecord]:
        """The outbox's events about the profile (`subject`), in `seq` order."""
        ...

    async def idempotency_records_of(self, profile_id: str) -> list[IdempotencyRecord]:
        """The stored idempotency records whose outcome is this profile."""
        ...

    async def deliveries_of(self, profile_id: str) -> list[DisclosedEvent]:
        """The webhook deliveries of the profile's events (dead letters included), oldest first."""
        ...

    async def remove(self, profile_id: str, at: datetime, cause: TombstoneCause) -> int | None:
        """Remove the profile's personal data: its rows (profile, emails, links) go, its past
        events' payloads and the idempotency outcomes that hold it are replaced by erased
        forms, and a tombstone (id, `at`) stays. Returns the removed profile's version, None when
        there was no profile row (already removed: the call changes nothing else then)."""
        ...

    async def tombstone(self, profile_id: str) -> Tombstone | None: ...

    async def deleted_before(self, before: datetime, limit: int) -> list[str]:
        """Ids of profiles soft-deleted before `before`, oldest deletion first, at most `limit`."""
        ...


class ErasureSagas(Protocol):
    """The erasure sagas' state, one row each, a profile having at most one."""

    async def add(self, erasure: Erasure) -> bool:
        """Store a new saga; False when the profile has one already (a concurrent request)."""
        ...

    async def get(self, erasure_id: str) -> Erasure | None: ...

    async def of_profile(self, profile_id: str) -> Erasure | None: ...

    async def save(self, erasure: Erasure, holder: str, lease_until: datetime) -> bool:
        """Store the saga's new state if `holder` still holds its lease (renewing it); False
        when another runner took it over: the caller's transaction must then roll back."""
        ...

    async def claim_due(self, holder: str, now: datetime, lease_until: datetime, limit: int) -> list[Erasure]:
        """Lease running sagas due at `now` (next attempt reached, lease free or expired) to
        `holder` until `lease_until`; another runner skips them meanwhile."""
        ...

    async def restart(self, erasure_id: str, now: datetime, give_up_at: datetime) -> None:
        """Run a failed saga again from the step it stopped at, with a new deadline."""
        ...


class ErasureAcknowledgements(Protocol):
    """Which consumers holding personal data still owe an acknowledgement of an erased event.

    The holders are the webhook endpoints registered with `holds_personal_data` (the webhook
    endpoints table is the one registry); an endpoint acknowledges the event by answering 2xx
    to its delivery (the webhook deliveries table records that). Nothing else writes here."""

    async def expect(self, event_id: str, event_time: datetime, at: datetime) -> int:
        """Record as owing an acknowledgement of `event_id` every personal-data endpoint that the
        event goes to (one of its types, registered by `event_time`: the endpoints the
        dispatcher fans it out to). Once: a second call adds only endpoints not yet recorded.
        Returns how many are recorded."""
        ...

    async def acknowledge_delivered(self, event_id: str) -> int:
        """Mark acknowledged, at their delivery's time, the recorded holders whose delivery of
        `event_id` was answered 2xx; how many were (the mark outlives the delivery's pruning)."""
        ...

    async def pending(self, event_id: str) -> list[str]:
        """The recorded holders (endpoint ids) of `event_id` that have not acknowledged it,
        sorted; a holder whose delivery is a dead letter stays pending, one whose endpoint was
        deleted owes nothing and is left out."""
        ...


class SubjectLinks(Protocol):
    """Which profile each end user (an issuer's subject) owns: one each way."""

    async def profile_of(self, issuer: str, subject: str) -> str | None: ...

    async def subject_of(self, profile_id: str) -> tuple[EndUser, datetime] | None:
        """The end user linked to the profile, and since when."""
        ...

    async def link(self, profile_id: str, end_user: EndUser, at: datetime) -> LinkOutcome:
        """Link the profile to `end_user`, in place of any end user it had; nothing changes
        when `end_user` is linked to another profile (`TAKEN`) or the profile's rows are gone
        (`NO_PROFILE`). Serialized with the profile's erasure (its rows locked)."""
        ...

    async def unlink(self, profile_id: str) -> bool:
        """Whether the profile had an end user, now unlinked."""
        ...


class UnitOfWork(Protocol):
    """One transaction (or, read-only, one connection without a transaction).

    Leaving the block without `commit()` rolls everything back.
    """

    @property
    def profiles(self) -> ProfileRepository: ...

    @property
    def idempotency(self) -> IdempotencyRecords: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def subjects(self) -> SubjectLinks: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class Store(Protocol):
    """A database: the factory of units of work, plus what health checks need."""

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> UnitOfWork:
        """`replica_ok` (with `read_only`): profile reads a read replica may serve, within the
        request's consistency (`keel.service.consistency`); adapters without replicas ignore it."""
        ...

    async def schema_revision(self) -> str | None:
        """The applied migration revision, None on an unmigrated database."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class PersonalDataUnitOfWork(UnitOfWork, Protocol):
    """A unit of work that also reaches the personal-data lifecycle's tables: what export,
    erasure and purge need (the SQL stores have them; the profile use cases need only
    `UnitOfWork`, so their fakes need not)."""

    @property
    def personal_data(self) -> PersonalData: ...

    @property
    def erasures(self) -> ErasureSagas: ...

    @property
    def erasure_acknowledgements(self) -> ErasureAcknowledgements: ...


class PersonalDataStore(Protocol):
    def unit_of_work(self, *, read_only: bool = False) -> PersonalDataUnitOfWork: ...


@dataclass(frozen=True, slots=True)
class CachedProfile:
    profile: Profile  # whole, private attributes included: cut per caller when served
    stored_at: float  # monotonic seconds, when the read that produced it started
    # Replaced by a write whose outcome is unknown: never served as current, but still better
    # than nothing (marked stale) while the database is unavailable.
    stale_only: bool = False


class ProfileCache(Protocol):
    """A bounded in-process map of profile id to the profile as last read from the database."""

    def get(self, profile_id: str) -> CachedProfile | None: ...

    def put(self, entry: CachedProfile) -> None:
        """Keep the entry, unless a version at least as new was invalidated or stored since (a
        slow read must not put back what a write has just replaced)."""
        ...

    def invalidate(self, profile_id: str, version: int, *, keep_as_stale: bool = False) -> None:
        """Forget the profile (or, `keep_as_stale`, keep it only as a stale fallback); from now
        on, versions below `version` are not stored."""
        ...

    def clear(self) -> None: ...


class KeyRevocations(Protocol):
    """Tells every Keel process that an API key was revoked, so they stop accepting it at once
    rather than when their key cache expires."""

    async def publish(self, key_id: str) -> int | None:
        """Best effort and bounded in time: never raises; how many processes were told (Redis's
        count of subscribers), None when the message did not reach the bus (processes then stop
        accepting the key within their key cache's TTL)."""
        ...

    async def listen(self, on_revoked: Callable[[str], None], on_gap: Callable[[], None]) -> None:
        """Deliver revoked key ids until cancelled; `on_gap` when messages may have been
        missed, so the caller can forget every key it trusted."""
        ...

    async def close(self) -> None: ...


class InvalidationBus(Protocol):
    """Tells the other Keel processes that a profile changed, so they drop their copy."""

    async def publish(self, profile_id: str, version: int) -> bool:
        """Best effort and bounded in time: never raises; False when the message did not reach
        the bus. A lost message leaves other processes with a copy at most one freshness period
        old (an erasure, which must not leave one, retries its step on False)."""
        ...

    async def listen(self, on_change: Callable[[str, int], None], on_gap: Callable[[], None]) -> None:
        """Deliver changes from other processes until cancelled; `on_gap` when messages may have
        been missed (a reconnection), so the caller can drop everything."""
        ...

    async def close(self) -> None: ...


class EventPublishFailed(Exception):
    """The event bus did not acknowledge a publish in time (down, slow, refused)."""


@dataclass(frozen=True, slots=True)
class StreamCopies:
    # (stream position, event id) of its published events whose position was recorded; the
    # erased event (`keel.profile.erased.v1`) is never among them: consumers must keep seeing it
    positions: tuple[tuple[int, str], ...]
    unpublished: int  # its events (but the erased one) not yet published: positions unknown yet


class EventPublisher(Protocol):
    """The event bus the relay publishes the outbox to (NATS JetStream)."""

    async def publish(
        self, subject: str, message_id: str, payload: bytes, traceparent: str | None = None
    ) -> int | None:
        """Publish and wait for the bus's acknowledgement, bounded in time; the stream position
        it acknowledged (None: the bus has none). `traceparent`, when given, travels with the
        message (a W3C trace context header). Publishing the same `message_id` again within
        the bus's duplicate window is acknowledged (at the first copy's position) and dropped.
        Raises `EventPublishFailed`."""
        ...

    async def erase(self, copies: tuple[tuple[int, str], ...]) -> None:
        """Delete the messages at these stream positions, overwriting their content, each only if
        it is the event named beside it (a stream created again restarts its positions: another
        event there is left alone); one already gone (aged out, erased before) is no error.
        Bounded in time; raises `EventPublishFailed`."""
        ...

    async def close(self) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...
