"""In-memory implementations of the storage ports, with the same semantics as the SQL adapters
(uniqueness of live handles and emails, optimistic versions, all-or-nothing units of work)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from keel.domain.api_keys import ApiKey
from keel.domain.errors import Conflict, VersionMismatch
from keel.domain.events import DomainEvent
from keel.domain.profile import Profile
from keel.service.ports import IdempotencyRecord, IdempotencyState, OutboxRecord, ProfileQuery


@dataclass
class _Tables:
    profiles: dict[str, Profile] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    events: list[OutboxRecord] = field(default_factory=list)
    relay_lease: tuple[str, datetime] | None = None


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

    def unit_of_work(self, *, read_only: bool = False) -> InMemoryUnitOfWork:
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
        self.outbox = _Outbox(self._tables)

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
        return next((k for k in self._tables.api_keys.values() if k.secret_hash == verifier), None)

    async def list_all(self) -> list[ApiKey]:
        return sorted(self._tables.api_keys.values(), key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str, at: datetime) -> bool:
        key = self._tables.api_keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._tables.api_keys[key_id] = replace(key, revoked_at=at)
        return True


class _Outbox:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def add(self, event: DomainEvent, source: str) -> None:
        seq = self._tables.events[-1].seq + 1 if self._tables.events else 1
        self._tables.events.append(OutboxRecord(seq, event, source, None))

    async def unpublished(self, limit: int) -> list[OutboxRecord]:
        return [r for r in self._tables.events if r.published_at is None][:limit]

    async def mark_published(self, seqs: list[int], at: datetime) -> None:
        wanted = set(seqs)
        self._tables.events = [
            replace(r, published_at=at) if r.seq in wanted else r for r in self._tables.events
        ]

    async def read_from(self, seq: int, limit: int) -> list[OutboxRecord]:
        return [r for r in self._tables.events if r.seq >= seq][:limit]

    async def depth(self) -> int:
        return sum(1 for r in self._tables.events if r.published_at is None)

    async def prune_published(self, before: datetime) -> int:
        kept = [r for r in self._tables.events if r.published_at is None or r.published_at >= before]
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
