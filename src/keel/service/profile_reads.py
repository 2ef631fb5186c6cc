"""Reading one profile: through the cache, one database read per profile at a time, and stale
rather than nothing when the database is unavailable.

- Fresh hit: served from the cache (in-process), no database call.
- Miss or expired: one load per profile id at a time (single flight): 500 concurrent readers
  of a hot profile whose entry just expired cause one database read, not 500.
- The load fails because the database is unavailable (down, blackholed, breaker open, past
  the deadline): a cached copy up to `stale_if_error_seconds` old is served, marked stale with
  its age (RFC 5861's stale-if-error); without one, the error goes to the caller (503).
- Transient failures of the load are retried within the retry budget.
- Batches (`read_many`): fresh copies from the cache, the rest in one database read (no
  single flight per id), stale copies for the rest when the database is unavailable.
- Writes replace the entry here with what they committed, and invalidate it, through the bus,
  in every other process.

The cache holds whole profiles; the service cuts each to what its caller may see, so a cached
read never shows more than an uncached one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keel.domain.errors import CircuitOpen, DeadlineExceeded, Unavailable
from keel.domain.profile import Profile
from keel.resilience.deadline import current_deadline
from keel.resilience.retry import RetryPolicy
from keel.service.consistency import required_position
from keel.service.ports import CachedProfile, InvalidationBus, ProfileCache, ProfileQuery, Store


@dataclass(frozen=True, slots=True)
class ProfileRead:
    profile: Profile
    age_seconds: float = 0.0  # how old the copy is; 0 when read from the database just now
    stale: bool = False  # served past its freshness because the database is unavailable
    fresh_seconds: float = 0.0

    @property
    def seconds_past_fresh(self) -> float:
        return self.age_seconds - self.fresh_seconds


@dataclass(frozen=True, slots=True)
class CachePolicy:
    fresh_seconds: float = 5.0
    stale_if_error_seconds: float = 600.0


# What a cache lookup ended as, for metrics: hit, miss, coalesced (joined a load in flight),
# stale (served stale on error), error (no copy to fall back on).
Outcome = Callable[[str], None]


def _transient(error: BaseException) -> bool:
    # Not worth retrying: an open breaker (it refuses on purpose) or a spent deadline.
    return isinstance(error, Unavailable) and not isinstance(error, CircuitOpen | DeadlineExceeded)


class ProfileReads:
    def __init__(
        self,
        store: Store,
        retry: RetryPolicy,
        *,
        cache: ProfileCache | None = None,
        bus: InvalidationBus | None = None,
        policy: CachePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_outcome: Outcome | None = None,
    ) -> None:
        self._store = store
        self._retry = retry
        self._cache = cache
        self._bus = bus
        self._policy = policy or CachePolicy()
        self._clock = clock
        self._on_outcome = on_outcome
        self._flights: dict[str, asyncio.Task[Profile | None]] = {}

    async def read(self, profile_id: str) -> ProfileRead | None:
        """The live profile (None when there is none), possibly from the cache.

        Without a cache, reads may go to a read replica. With one, the cache is filled from the
        primary only: a replica's older copy would outlive the invalidation of a newer write. A
        request that must read at a position (a consistency token, or its own write) passes the
        cache by: no copy here says which writes it has seen."""
        if self._cache is None or required_position() is not None:
            profile = await self._retry.run(
                lambda: self._load(profile_id, replica_ok=True), retryable=_transient
            )
            if profile is None:
                return None
            return (
                ProfileRead(profile)
                if self._cache is None
                else ProfileRead(profile, fresh_seconds=self._policy.fresh_seconds)
            )
        cached = self._cache.get(profile_id)
        fresh = self._policy.fresh_seconds
        if cached is not None:
            age = self._clock() - cached.stored_at
            if age < fresh and not cached.stale_only:
                self._count("hit")
                return ProfileRead(cached.profile, age, fresh_seconds=fresh)
        try:
            profile = await self._shared_load(profile_id)
        except Unavailable:
            if cached is not None:
                age = self._clock() - cached.stored_at
                if age <= fresh + self._policy.stale_if_error_seconds:
                    self._count("stale")
                    return ProfileRead(cached.profile, age, stale=True, fresh_seconds=fresh)
            self._count("error")
            raise
        return ProfileRead(profile, fresh_seconds=fresh) if profile is not None else None

    async def read_many(self, profile_ids: Sequence[str]) -> dict[str, ProfileRead]:
        """The live profiles among `profile_ids` (absent ones are left out): fresh copies from
        the cache, the rest in one database read. When the database is unavailable, stale
        copies stand in for the rest; if some id has none, the batch fails as a whole (leaving
        it out would say it does not exist)."""
        fresh = self._policy.fresh_seconds
        if self._cache is not None and required_position() is not None:
            # As in `read`: past the cache, a replica may serve it.
            wanted = list(profile_ids)
            loaded = await self._retry.run(
                lambda: self._load_many(wanted, replica_ok=True), retryable=_transient
            )
            return {
                profile_id: ProfileRead(profile, fresh_seconds=fresh)
                for profile_id, profile in loaded.items()
            }
        found: dict[str, ProfileRead] = {}
        cached: dict[str, CachedProfile] = {}
        missing: list[str] = []
        for profile_id in profile_ids:
            entry = self._cache.get(profile_id) if self._cache is not None else None
            if entry is not None:
                age = self._clock() - entry.stored_at
                if age < fresh and not entry.stale_only:
                    found[profile_id] = ProfileRead(entry.profile, age, fresh_seconds=fresh)
                    continue
                cached[profile_id] = entry
            missing.append(profile_id)
        if self._cache is not None:
            self._count_many("hit", len(found))
            self._count_many("miss", len(missing))
        if not missing:
            return found
        started = self._clock()
        try:
            loaded = await self._retry.run(
                lambda: self._load_many(missing, replica_ok=self._cache is None), retryable=_transient
            )
        except Unavailable:
            stale_window = fresh + self._policy.stale_if_error_seconds
            for profile_id in missing:
                entry = cached.get(profile_id)
                age = self._clock() - entry.stored_at if entry is not None else math.inf
                if entry is None or age > stale_window:
                    self._count("error")
                    raise
                found[profile_id] = ProfileRead(entry.profile, age, stale=True, fresh_seconds=fresh)
            self._count_many("stale", len(missing))
            return found
        for profile_id in missing:
            profile = loaded.get(profile_id)
            if profile is not None:
                found[profile_id] = ProfileRead(profile, fresh_seconds=fresh)
            if self._cache is not None:
                if profile is not None:
                    self._cache.put(CachedProfile(profile, started))
                else:
                    self._cache.invalidate(profile_id, 0)  # deleted: never serve the old copy stale
        return found

    def forget(self, profile_id: str, version: int, *, keep_as_stale: bool = False) -> None:
        """In this process: drop the cached copy (or keep it as a stale fallback only) and
        detach any load in flight (it may have read the version before `version`), so the next
        read goes to the database."""
        self._flights.pop(profile_id, None)
        if self._cache is not None:
            self._cache.invalidate(profile_id, version, keep_as_stale=keep_as_stale)

    async def changed(
        self, profile_id: str, version: int, committed: Profile | None = None, *, deleted: bool = False
    ) -> bool:
        """A write produced `version`, or may have: forget older copies here and in every
        process. Here, a `committed` profile replaces the copy (write-through); after a write
        whose outcome is unknown, the old copy stays as a stale fallback only, so the profile
        stays servable, marked stale, if the database has just gone away. A deleted profile
        keeps nothing. False when the other processes may not have been told (the bus did not
        take the message)."""
        self.forget(profile_id, version, keep_as_stale=committed is None and not deleted)
        if committed is not None and not deleted and self._cache is not None:
            self._cache.put(CachedProfile(committed, self._clock()))
        if self._bus is not None:
            return await self._bus.publish(profile_id, version)
        return True

    async def listen(self) -> None:
        """Apply other processes' invalidations until cancelled (a background task)."""
        if self._bus is None or self._cache is None:
            return
        await self._bus.listen(self.forget, self._cache.clear)

    async def _shared_load(self, profile_id: str) -> Profile | None:
        flight = self._flights.get(profile_id)
        if flight is None:
            self._count("miss")
            # A task of its own: the readers waiting on it may give up (deadline, disconnect)
            # without cancelling it for the others. It runs under the first reader's deadline.
            flight = asyncio.create_task(self._load_and_keep(profile_id))
            self._flights[profile_id] = flight
            flight.add_done_callback(lambda done: self._landed(profile_id, done))
        else:
            self._count("coalesced")
        deadline = current_deadline()
        if deadline is None:
            return await asyncio.shield(flight)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(flight)
        except TimeoutError as error:
            raise DeadlineExceeded("The database did not answer within the request's deadline.") from error

    def _landed(self, profile_id: str, flight: asyncio.Task[Profile | None]) -> None:
        if self._flights.get(profile_id) is flight:
            del self._flights[profile_id]
        if not flight.cancelled():
            flight.exception()  # retrieved here: every waiter may have given up on it

    async def _load_and_keep(self, profile_id: str) -> Profile | None:
        started = self._clock()
        profile = await self._retry.run(lambda: self._load(profile_id), retryable=_transient)
        if self._cache is not None and self._flights.get(profile_id) is asyncio.current_task():
            if profile is not None:
                self._cache.put(CachedProfile(profile, started))
            else:
                self._cache.invalidate(profile_id, 0)  # deleted: never serve the old copy stale
        return profile

    def _count_many(self, outcome: str, count: int) -> None:
        for _ in range(count):
            self._count(outcome)

    def _count(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def _load_many(self, profile_ids: list[str], *, replica_ok: bool = False) -> dict[str, Profile]:
        async with self._store.unit_of_work(read_only=True, replica_ok=replica_ok) as uow:
            profiles = await uow.profiles.find(ProfileQuery(limit=len(profile_ids), ids=tuple(profile_ids)))
        return {profile.id: profile for profile in profiles}

    async def _load(self, profile_id: str, *, replica_ok: bool = False) -> Profile | None:
        async with self._store.unit_of_work(read_only=True, replica_ok=replica_ok) as uow:
            return await uow.profiles.get(profile_id)
