"""In-memory implementations of the storage ports, with the same semantics as the SQL adapters
(uniqueness of live handles and emails, optimistic versions, all-or-nothing units of work)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from keel.domain.api_keys import ApiKey, AuditEntry
from keel.domain.end_users import EndUser, LinkOutcome
from keel.domain.errors import Conflict, VersionMismatch
from keel.domain.events import PROFILE_ERASED, DomainEvent
from keel.domain.profile import Profile
from keel.domain.webhooks import DeliveryState, WebhookDelivery, WebhookEndpoint
from keel.service.ports import IdempotencyRecord, IdempotencyState, OutboxRecord, ProfileQuery, StreamCopies
from keel.service.webhook_ports import StoredEndpoint


@dataclass
class _Tables:
    profiles: dict[str, Profile] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    events: list[OutboxRecord] = field(default_factory=list)
    relay_lease: tuple[str, datetime] | None = None
    fanned_out: set[int] = field(default_factory=set)  # outbox seqs the webhook fan-out has seen
    webhook_endpoints: dict[str, StoredEndpoint] = field(default_factory=dict)
    webhook_deliveries: dict[str, WebhookDelivery] = field(default_factory=dict)
    webhook_lease: tuple[str, datetime] | None = None
    stream_positions: dict[int, int] = field(default_factory=dict)  # outbox seq -> stream position
    audit: list[AuditEntry] = field(default_factory=list)
    subjects: dict[tuple[str, str], tuple[str, datetime]] = field(default_factory=dict)


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        self.current += timedelta(microseconds=1)
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


class InMemoryStore:
    def __init__(self) -> None:
        self.tables = _Tables()
        self.reads = 0
        self.commits = 0

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self)

    async def schema_revision(self) -> str | None:
        return "in-memory"

    async def close(self) -> None:
        return None


class InMemoryUnitOfWork:
    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self._tables = copy.deepcopy(store.tables)
        self.profiles = _Profiles(self._tables, store)
        self.idempotency = _Idempotency(self._tables)
        self.api_keys = _ApiKeys(self._tables, store)
        self.audit = _Audit(self._tables)
        self.outbox = _Outbox(self._tables)
        self.webhooks = _Webhooks(self._tables)
        self.subjects = _Subjects(self._tables)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def commit(self) -> None:
        self._store.tables = copy.deepcopy(self._tables)
        self._store.commits += 1


class _Profiles:
    def __init__(self, tables: _Tables, store: InMemoryStore) -> None:
        self._tables = tables
        self._store = store

    async def get(self, profile_id: str) -> Profile | None:
        self._store.reads += 1
        profile = self._tables.profiles.get(profile_id)
        return profile if profile is not None and not profile.is_deleted else None

    async def find(self, query: ProfileQuery) -> list[Profile]:
        self._store.reads += 1
        found = []
        for profile in sorted(self._tables.profiles.values(), key=lambda p: p.id):
            if profile.is_deleted:
                continue
            if query.handle is not None and profile.handle != query.handle:
                continue
            if query.email is not None and query.email not in {e.normalized for e in profile.fields.emails}:
                continue
            if query.ids is not None and profile.id not in query.ids:
                continue
            if query.after_id is not None and profile.id <= query.after_id:
                continue
            found.append(profile)
        return found[: query.limit]

    def _check_unique(self, profile: Profile) -> None:
        if profile.is_deleted:
            return
        emails = {e.normalized for e in profile.fields.emails}
        for other in self._tables.profiles.values():
            if other.id == profile.id or other.is_deleted:
                continue
            if other.handle == profile.handle:
                raise Conflict("This handle is already used by another profile.", field="/handle")
            if emails & {e.normalized for e in other.fields.emails}:
                raise Conflict("This email address is already used by another profile.", field="/emails")

    async def add(self, profile: Profile) -> None:
        self._check_unique(profile)
        self._tables.profiles[profile.id] = profile

    async def update(self, profile: Profile, expected_version: int) -> None:
        stored = self._tables.profiles.get(profile.id)
        if stored is None or stored.is_deleted or stored.version != expected_version:
            raise VersionMismatch("The profile changed meanwhile.", current_version=None)
        self._check_unique(profile)
        self._tables.profiles[profile.id] = profile


class _Idempotency:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def reserve(self, record: IdempotencyRecord, now: datetime) -> IdempotencyRecord | None:
        key = (record.scope, record.key)
        existing = self._tables.idempotency.get(key)
        if existing is not None and (
            existing.expires_at <= now
            or (existing.state is IdempotencyState.IN_PROGRESS and existing.locked_until <= now)
        ):
            existing = None
        if existing is not None:
            return existing
        self._tables.idempotency[key] = record
        return None

    async def complete(self, scope: str, key: str, fingerprint: str, outcome: str) -> bool:
        record = self._tables.idempotency.get((scope, key))
        if (
            record is None
            or record.fingerprint != fingerprint
            or record.state is not IdempotencyState.IN_PROGRESS
        ):
            return False
        self._tables.idempotency[(scope, key)] = replace(
            record, state=IdempotencyState.COMPLETED, outcome=outcome
        )
        return True

    async def release(self, scope: str, key: str) -> None:
        record = self._tables.idempotency.get((scope, key))
        if record is not None and record.state is IdempotencyState.IN_PROGRESS:
            del self._tables.idempotency[(scope, key)]

    async def purge_expired(self, now: datetime) -> int:
        expired = [k for k, r in self._tables.idempotency.items() if r.expires_at <= now]
        for k in expired:
            del self._tables.idempotency[k]
        return len(expired)


class _ApiKeys:
    def __init__(self, tables: _Tables, store: InMemoryStore) -> None:
        self._tables = tables
        self._store = store

    async def add(self, key: ApiKey) -> None:
        self._tables.api_keys[key.id] = key

    async def get(self, key_id: str) -> ApiKey | None:
        self._store.reads += 1
        return self._tables.api_keys.get(key_id)

    async def by_verifier(self, verifier: str) -> ApiKey | None:
        self._store.reads += 1
        return next(
            (
                k
                for k in self._tables.api_keys.values()
                if verifier in (k.secret_hash, k.previous_secret_hash)
            ),
            None,
        )

    async def get_for_update(self, key_id: str) -> ApiKey | None:
        return await self.get(key_id)  # units of work here are all-or-nothing copies

    async def update(self, key: ApiKey) -> None:
        if key.id in self._tables.api_keys:
            self._tables.api_keys[key.id] = key

    async def list_all(self) -> list[ApiKey]:
        return sorted(self._tables.api_keys.values(), key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str, at: datetime) -> bool:
        key = self._tables.api_keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._tables.api_keys[key_id] = replace(key, revoked_at=at)
        return True


class _Subjects:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def profile_of(self, issuer: str, subject: str) -> str | None:
        held = self._tables.subjects.get((issuer, subject))
        return held[0] if held is not None else None

    async def subject_of(self, profile_id: str) -> tuple[EndUser, datetime] | None:
        for (issuer, subject), (held, at) in self._tables.subjects.items():
            if held == profile_id:
                return EndUser(issuer, subject), at
        return None

    async def link(self, profile_id: str, end_user: EndUser, at: datetime) -> LinkOutcome:
        if profile_id not in self._tables.profiles:
            return LinkOutcome.NO_PROFILE
        held = self._tables.subjects.get((end_user.issuer, end_user.subject))
        if held is not None and held[0] != profile_id:
            return LinkOutcome.TAKEN
        await self.unlink(profile_id)
        self._tables.subjects[(end_user.issuer, end_user.subject)] = (profile_id, at)
        return LinkOutcome.LINKED

    async def unlink(self, profile_id: str) -> bool:
        linked = [key for key, (held, _) in self._tables.subjects.items() if held == profile_id]
        for key in linked:
            del self._tables.subjects[key]
        return bool(linked)


class _Audit:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def add(self, entry: AuditEntry) -> None:
        self._tables.audit.append(replace(entry, seq=len(self._tables.audit) + 1))

    async def entries(self, *, limit: int, before: int | None, subject: str | None) -> list[AuditEntry]:
        found = [
            e
            for e in reversed(self._tables.audit)
            if (before is None or (e.seq or 0) < before) and (subject is None or e.subject == subject)
        ]
        return found[:limit]


class _Outbox:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def add(self, event: DomainEvent, source: str) -> None:
        seq = self._tables.events[-1].seq + 1 if self._tables.events else 1
        self._tables.events.append(OutboxRecord(seq, event, source, None))

    async def unpublished(self, limit: int) -> list[OutboxRecord]:
        return [r for r in self._tables.events if r.published_at is None][:limit]

    async def mark_published(self, published: list[tuple[int, int | None]], at: datetime) -> None:
        positions = dict(published)
        self._tables.events = [
            replace(r, published_at=at) if r.seq in positions else r for r in self._tables.events
        ]
        self._tables.stream_positions.update(
            (seq, position) for seq, position in positions.items() if position is not None
        )

    async def stream_copies(self, subject: str) -> StreamCopies:
        mine = [
            r for r in self._tables.events if r.event.subject == subject and r.event.type != PROFILE_ERASED
        ]
        known = self._tables.stream_positions
        positions = sorted((known[r.seq], r.event.id) for r in mine if r.seq in known)
        return StreamCopies(tuple(positions), sum(1 for r in mine if r.published_at is None))

    async def read_from(self, seq: int, limit: int) -> list[OutboxRecord]:
        return [r for r in self._tables.events if r.seq >= seq][:limit]

    async def depth(self) -> int:
        return sum(1 for r in self._tables.events if r.published_at is None)

    async def prune_published(self, before: datetime) -> int:
        kept = [
            r
            for r in self._tables.events
            if r.published_at is None or r.published_at >= before or r.seq not in self._tables.fanned_out
        ]
        pruned = len(self._tables.events) - len(kept)
        self._tables.events = kept
        return pruned

    async def claim_relay_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        lease = self._tables.relay_lease
        if lease is not None and lease[0] != holder and lease[1] > now:
            return False
        self._tables.relay_lease = (holder, until)
        return True

    async def release_relay_lease(self, holder: str) -> None:
        if self._tables.relay_lease is not None and self._tables.relay_lease[0] == holder:
            self._tables.relay_lease = None


class _Webhooks:
    """The webhook tables: endpoints, deliveries (unique per endpoint and event, deleted with
    their endpoint), the outbox's fan-out marks and the dispatcher's lease."""

    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def add_endpoint(self, endpoint: WebhookEndpoint, sealed_secret: str) -> None:
        self._tables.webhook_endpoints[endpoint.id] = StoredEndpoint(endpoint, sealed_secret)

    async def endpoints(self) -> list[StoredEndpoint]:
        return sorted(
            self._tables.webhook_endpoints.values(), key=lambda s: (s.endpoint.created_at, s.endpoint.id)
        )

    async def endpoint(self, endpoint_id: str) -> StoredEndpoint | None:
        return self._tables.webhook_endpoints.get(endpoint_id)

    async def replace_sealed_secret(self, endpoint_id: str, old: str, new: str) -> bool:
        stored = self._tables.webhook_endpoints.get(endpoint_id)
        if stored is None or stored.sealed_secret != old:
            return False
        self._tables.webhook_endpoints[endpoint_id] = StoredEndpoint(stored.endpoint, new)
        return True

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        if self._tables.webhook_endpoints.pop(endpoint_id, None) is None:
            return False
        deliveries = self._tables.webhook_deliveries
        for delivery_id in [d.id for d in deliveries.values() if d.endpoint_id == endpoint_id]:
            del deliveries[delivery_id]
        return True

    async def events_to_fan_out(self, limit: int) -> list[OutboxRecord]:
        return [r for r in self._tables.events if r.seq not in self._tables.fanned_out][:limit]

    async def mark_fanned_out(self, seqs: Sequence[int], at: datetime) -> None:
        self._tables.fanned_out.update(seqs)

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        if not any(
            d.endpoint_id == delivery.endpoint_id and d.event_id == delivery.event_id
            for d in self._tables.webhook_deliveries.values()
        ):
            self._tables.webhook_deliveries[delivery.id] = delivery

    async def due_deliveries(self, now: datetime, per_endpoint: int) -> list[WebhookDelivery]:
        due = sorted(
            (
                d
                for d in self._tables.webhook_deliveries.values()
                if d.state is DeliveryState.PENDING
                and d.next_attempt_at is not None
                and d.next_attempt_at <= now
            ),
            key=lambda d: (d.next_attempt_at, d.id),
        )
        taken: dict[str, int] = {}
        chosen = []
        for delivery in due:
            if taken.get(delivery.endpoint_id, 0) < per_endpoint:
                taken[delivery.endpoint_id] = taken.get(delivery.endpoint_id, 0) + 1
                chosen.append(delivery)
        return chosen

    async def hold(self, delivery_ids: Sequence[str], until: datetime) -> None:
        for delivery_id in delivery_ids:
            held = self._tables.webhook_deliveries[delivery_id]
            self._tables.webhook_deliveries[delivery_id] = replace(held, next_attempt_at=until)

    async def record_attempt(self, delivery: WebhookDelivery) -> None:
        if delivery.id in self._tables.webhook_deliveries:
            self._tables.webhook_deliveries[delivery.id] = delivery

    async def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return self._tables.webhook_deliveries.get(delivery_id)

    async def deliveries_of(self, endpoint_id: str, state: str, limit: int) -> list[WebhookDelivery]:
        found = [
            d
            for d in self._tables.webhook_deliveries.values()
            if d.endpoint_id == endpoint_id and d.state == state
        ]
        return sorted(found, key=lambda d: (d.created_at, d.id))[:limit]

    async def replay_dead(self, endpoint_id: str, delivery_ids: Sequence[str] | None, now: datetime) -> int:
        replayed = 0
        for delivery in list(self._tables.webhook_deliveries.values()):
            if delivery.endpoint_id != endpoint_id or delivery.state is not DeliveryState.DEAD:
                continue
            if delivery_ids is not None and delivery.id not in delivery_ids:
                continue
            self._tables.webhook_deliveries[delivery.id] = replace(
                delivery, state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, finished_at=None
            )
            replayed += 1
        return replayed

    async def count_dead(self) -> int:
        return sum(1 for d in self._tables.webhook_deliveries.values() if d.state is DeliveryState.DEAD)

    async def prune_delivered(self, before: datetime) -> int:
        old = [
            d.id
            for d in self._tables.webhook_deliveries.values()
            if d.state is DeliveryState.DELIVERED and d.finished_at is not None and d.finished_at < before
        ]
        for delivery_id in old:
            del self._tables.webhook_deliveries[delivery_id]
        return len(old)

    async def claim_lease(self, holder: str, now: datetime, until: datetime) -> bool:
        lease = self._tables.webhook_lease
        if lease is not None and lease[0] != holder and lease[1] > now:
            return False
        self._tables.webhook_lease = (holder, until)
        return True

    async def release_lease(self, holder: str) -> None:
        if self._tables.webhook_lease is not None and self._tables.webhook_lease[0] == holder:
            self._tables.webhook_lease = None
