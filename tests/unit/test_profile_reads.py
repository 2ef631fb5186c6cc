"""The read path: cache, single flight, stale-if-error, invalidation."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import pytest

from keel.cache.memory import BoundedProfileCache
from keel.domain.errors import DeadlineExceeded, Unavailable
from keel.domain.profile import Email, Profile, ProfileFields
from keel.resilience.deadline import deadline_in
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy
from keel.service import consistency
from keel.service.ports import (
    ApiKeyRepository,
    AuditLog,
    CachedProfile,
    IdempotencyRecords,
    Outbox,
    ProfileRepository,
    SubjectLinks,
)
from keel.service.profile_reads import CachePolicy, ProfileReads
from keel.service.profiles import ProfileService
from keel.service.use_cases import ListFilters
from keel.service.webhook_ports import WebhookRepository
from tests.fakes import FakeClock, InMemoryStore
from tests.unit.test_profile_service import ADMIN, POLICY, READER, WRITER, doc


class Database:
    """An in-memory store that can be slow or down, and counts profile reads."""

    def __init__(self) -> None:
        self.inner = InMemoryStore()
        self.down = False
        self.read_delay = 0.0
        self.lose_commits = False  # a commit whose answer never comes: its outcome is unknown
        # Set when a unit of work has begun (its snapshot taken); while `gate` is set to an
        # unset event, units of work begun wait on it: a read held in flight until the test
        # lets it go, without guessing how long it takes to get there.
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.replica_ok: list[bool] = []  # per read-only unit of work: whether a replica may serve it

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> _UnitOfWork:
        if read_only:
            self.replica_ok.append(replica_ok)
        return _UnitOfWork(self, read_only)

    async def schema_revision(self) -> str | None:
        return "test"

    async def close(self) -> None:
        return None


class _UnitOfWork:
    def __init__(self, db: Database, read_only: bool) -> None:
        self._db = db
        self._inner = db.inner.unit_of_work(read_only=read_only)

    @property
    def profiles(self) -> ProfileRepository:
        return self._inner.profiles

    @property
    def idempotency(self) -> IdempotencyRecords:
        return self._inner.idempotency

    @property
    def api_keys(self) -> ApiKeyRepository:
        return self._inner.api_keys

    @property
    def audit(self) -> AuditLog:
        return self._inner.audit

    @property
    def outbox(self) -> Outbox:
        return self._inner.outbox

    @property
    def webhooks(self) -> WebhookRepository:
        return self._inner.webhooks

    @property
    def subjects(self) -> SubjectLinks:
        return self._inner.subjects

    async def __aenter__(self) -> Self:
        if self._db.down:
            raise Unavailable("The database is not reachable.")
        self._db.entered.set()
        gate = self._db.gate
        if gate is not None:
            await gate.wait()
        await asyncio.sleep(self._db.read_delay)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def commit(self) -> None:
        await self._inner.commit()
        if self._db.lose_commits:
            raise Unavailable("The connection was lost during the commit.")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(db: Database, clock: Clock, outcomes: list[str]) -> tuple[ProfileService, ProfileReads]:
    reads = ProfileReads(
        db,
        RetryPolicy(RetryBudget(ratio=0.0, floor_per_second=0.0, cap=0.0), Backoff()),
        cache=BoundedProfileCache(100),
        policy=CachePolicy(fresh_seconds=5.0, stale_if_error_seconds=60.0),
        clock=clock,
        on_outcome=outcomes.append,
    )
    return ProfileService(db, FakeClock(), POLICY, "eu1", reads=reads), reads


@pytest.fixture
def db() -> Database:
    return Database()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_500_concurrent_reads_of_an_expired_profile_read_the_database_once(
    db: Database, clock: Clock
) -> None:
    outcomes: list[str] = []
    service, _ = build(db, clock, outcomes)
    created = (await service.create_profile(WRITER, doc())).profile
    await service.get_profile(READER, created.id)
    clock.now += 10  # expired
    db.inner.reads = 0
    db.read_delay = 0.05
    results = await asyncio.gather(*(service.read_profile(READER, created.id) for _ in range(500)))
    assert db.inner.reads == 1
    assert {r.profile.id for r in results} == {created.id}
    assert not any(r.stale for r in results)
    assert outcomes.count("coalesced") == 499


async def test_a_fresh_copy_is_served_without_the_database(db: Database, clock: Clock) -> None:
    service, _ = build(db, clock, [])
    created = (await service.create_profile(WRITER, doc())).profile
    await service.get_profile(READER, created.id)
    db.down = True
    read = await service.read_profile(READER, created.id)
    assert not read.stale
    assert read.profile.version == created.version


async def test_when_the_database_is_down_a_cached_copy_is_served_marked_stale(
    db: Database, clock: Clock
) -> None:
    outcomes: list[str] = []
    service, _ = build(db, clock, outcomes)
    created = (await service.create_profile(WRITER, doc())).profile
    await service.get_profile(READER, created.id)
    clock.now += 20
    db.down = True
    read = await service.read_profile(READER, created.id)
    assert read.stale
    assert read.age_seconds == pytest.approx(20)
    assert read.seconds_past_fresh == pytest.approx(15)
    assert outcomes[-1] == "stale"


async def test_an_uncached_or_too_old_profile_fails_fast_when_the_database_is_down(
    db: Database, clock: Clock
) -> None:
    service, _ = build(db, clock, [])
    cached = (await service.create_profile(WRITER, doc())).profile
    uncached = (await service.create_profile(WRITER, doc(handle="other", email="o@example.com"))).profile
    await service.get_profile(READER, cached.id)
    db.down = True
    with pytest.raises(Unavailable):
        await service.read_profile(READER, uncached.id)
    clock.now += 5 + 60 + 1  # past freshness and the stale-if-error window
    with pytest.raises(Unavailable):
        await service.read_profile(READER, cached.id)


async def test_a_write_invalidates_the_cached_copy(db: Database, clock: Clock) -> None:
    service, _ = build(db, clock, [])
    created = (await service.create_profile(WRITER, doc())).profile
    await service.get_profile(READER, created.id)
    await service.update_profile(WRITER, created.id, {"display_name": "New"})
    read = await service.read_profile(READER, created.id)
    assert read.profile.version == created.version + 1
    assert read.profile.fields.display_name == "New"
    await service.delete_profile(WRITER, created.id)
    db.down = True
    with pytest.raises(Unavailable):  # a deleted profile is never served stale
        await service.read_profile(READER, created.id)


async def test_after_a_write_with_an_unknown_outcome_the_old_copy_is_only_a_stale_fallback(
    db: Database, clock: Clock
) -> None:
    service, _ = build(db, clock, [])
    created = (await service.create_profile(WRITER, doc())).profile
    await service.get_profile(READER, created.id)
    db.lose_commits = True
    with pytest.raises(Unavailable):
        await service.update_profile(WRITER, created.id, {"display_name": "Maybe"})
    db.lose_commits = False
    # Not served as current: the write may have gone through (here it did).
    assert (await service.read_profile(READER, created.id)).profile.fields.display_name == "Maybe"
    await service.update_profile(WRITER, created.id, {"display_name": "Sure"})
    db.lose_commits = True
    with pytest.raises(Unavailable):
        await service.update_profile(WRITER, created.id, {"display_name": "Unknown"})
    db.down = True
    fallback = await service.read_profile(READER, created.id)
    assert fallback.stale
    assert fallback.profile.fields.display_name == "Sure"


async def test_a_read_in_flight_during_a_write_does_not_answer_later_readers(
    db: Database, clock: Clock
) -> None:
    service, _ = build(db, clock, [])
    created = (await service.create_profile(WRITER, doc())).profile
    held = db.gate = asyncio.Event()
    db.entered.clear()
    slow = asyncio.create_task(service.read_profile(READER, created.id))
    await db.entered.wait()  # the slow read has read version 1 and is held
    db.gate = None
    updated = await service.update_profile(WRITER, created.id, {"display_name": "New"})
    after = await service.read_profile(READER, created.id)
    assert after.profile.version == updated.version
    held.set()
    assert (await slow).profile.version == created.version
    # ...and the slow read did not put version 1 back in the cache.
    assert (await service.read_profile(READER, created.id)).profile.version == updated.version


async def test_cached_reads_show_each_caller_only_what_it_may_see(db: Database, clock: Clock) -> None:
    service, _ = build(db, clock, [])
    created = (await service.create_profile(ADMIN, doc(attributes={"plan": "pro", "risk": 0.5}))).profile
    assert (await service.get_profile(ADMIN, created.id)).fields.attributes == {"plan": "pro", "risk": 0.5}
    assert (await service.get_profile(READER, created.id)).fields.attributes == {"plan": "pro"}
    clock.now += 20
    db.down = True
    stale = await service.read_profile(READER, created.id)
    assert stale.stale
    assert stale.profile.fields.attributes == {"plan": "pro"}


async def test_a_reader_waiting_on_another_s_read_keeps_its_own_deadline(db: Database, clock: Clock) -> None:
    service, _ = build(db, clock, [])
    created = (await service.create_profile(WRITER, doc())).profile
    held = db.gate = asyncio.Event()  # the leader's read stays in flight until let go
    db.entered.clear()
    leader = asyncio.create_task(service.read_profile(READER, created.id))
    await db.entered.wait()
    with deadline_in(0.05), pytest.raises(DeadlineExceeded):
        await service.read_profile(READER, created.id)
    held.set()
    assert (await leader).profile.id == created.id  # the shared read was not cancelled


def test_the_cache_is_bounded_and_keeps_no_version_older_than_an_invalidation() -> None:
    cache = BoundedProfileCache(2)
    fields = ProfileFields(handle="ada", emails=(Email("ada@example.com", primary=True),))
    first = Profile.create("a", fields, datetime(2026, 1, 1, tzinfo=UTC))
    second = replace(first, version=2)

    cache.put(CachedProfile(first, 0.0))
    cache.invalidate("a", 2)
    cache.put(CachedProfile(first, 1.0))  # a slow read finishing after the write
    assert cache.get("a") is None
    cache.put(CachedProfile(second, 1.0))
    got = cache.get("a")
    assert got is not None
    assert got.profile.version == 2
    cache.put(CachedProfile(replace(first, id="b"), 0.0))
    cache.put(CachedProfile(replace(first, id="c"), 0.0))
    assert len(cache) == 2
    assert cache.get("a") is None  # least recently used went first


async def test_cache_fills_come_from_the_primary_and_a_token_passes_the_cache_by(
    db: Database, clock: Clock
) -> None:
    """A replica's older copy must never fill the cache (it would outlive the invalidation of a
    newer write); a read that must see a position (keel.service.consistency) goes past the
    cache, where a replica that replayed that far may serve it, and fills nothing."""
    service, reads = build(db, clock, [])
    created = (await service.create_profile(WRITER, doc())).profile
    reads.forget(created.id, created.version)  # the create's write-through copy: gone
    db.replica_ok.clear()
    with consistency.scope(consistency.Consistency(read_after=42)):
        await service.read_profile(READER, created.id)
        await service.get_profiles(READER, [created.id])
    assert db.replica_ok == [True, True]
    await service.read_profile(READER, created.id)  # the token reads filled nothing: a miss
    await service.read_profile(READER, created.id)  # filled from the primary by that miss: a hit
    assert db.replica_ok == [True, True, False]


async def test_without_a_cache_every_profile_read_may_go_to_a_replica(db: Database) -> None:
    retry = RetryPolicy(RetryBudget(ratio=0.0, floor_per_second=0.0, cap=0.0), Backoff())
    service = ProfileService(db, FakeClock(), POLICY, "eu1", reads=ProfileReads(db, retry))
    created = (await service.create_profile(WRITER, doc())).profile
    db.replica_ok.clear()
    await service.read_profile(READER, created.id)
    await service.get_profiles(READER, [created.id])
    await service.list_profiles(READER, ListFilters(handle=created.handle), limit=10, cursor=None)
    await service.handle_available(READER, "someone_else")
    assert db.replica_ok == [True, True, True, True]
