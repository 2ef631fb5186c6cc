"""A serving node's copy of the layout record, and the profile repository that follows it.

`LayoutView` is the copy: refreshed (and acknowledged) by a unit of work that finds it older than
`refresh_after`, and never used for a read once older than `max_age`, measured from before the
read that fetched it. The migrator waits, before a layout stops being written, until every node
has acknowledged a record that reads elsewhere or has been silent longer than `max_age`: such a
node refreshes before its next read. A refresh installs the record it read before it
acknowledges it, so from the moment an acknowledgement can be seen every read of the node goes
by that record or a later one.

`LayoutProfiles` is the profile repository of a write unit of work: its first call reads the
record in the unit's own transaction (share-locked on PostgreSQL, so a change of phase waits for
the writes in flight and every later write sees it), then reads from and checks versions in the
layout the record reads, and mirrors each write to the other layout while a migration is under
way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from keel.domain.errors import Unavailable
from keel.domain.profile import Profile
from keel.service.ports import ProfileQuery
from keel.storage.layouts import Layout, LayoutMismatch, LayoutRecord, Phase


class LayoutProfileRepository(Protocol):
    """A layout's profile repository, with what a migration between layouts needs of it."""

    async def get(self, profile_id: str) -> Profile | None: ...
    async def find(self, query: ProfileQuery) -> list[Profile]: ...
    async def add(self, profile: Profile) -> None: ...
    async def update(self, profile: Profile, expected_version: int) -> None: ...

    async def scan(
        self, after_id: str | None, limit: int, *, through_id: str | None = None
    ) -> list[Profile]: ...

    async def ids_after(
        self, after_id: str | None, limit: int, *, through_id: str | None = None
    ) -> list[str]: ...

    async def lock_ids(self, profile_ids: Sequence[str]) -> None: ...

    async def load_ids(self, profile_ids: Sequence[str]) -> list[Profile]: ...

    async def put(self, profile: Profile, *, only_if_newer: bool = False) -> bool: ...

    async def remove(self, profile_ids: Sequence[str]) -> None: ...


class RecordSource(Protocol):
    """Where a node's refresh reads the record and acknowledges what it installed
    (`SqlLayoutRecords`; on SQLite a connection of its own acknowledges)."""

    async def read(self) -> LayoutRecord: ...
    async def acknowledge(self, node_id: str, generation: int) -> None: ...


class LayoutView:
    refresh_after = 0.5
    max_age = 2.0

    def __init__(self, node_id: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id  # None: not a serving node (the migrator): acknowledges nothing
        self._clock = clock
        self._record: LayoutRecord | None = None
        self._fetched_at = 0.0
        self._refreshing = False

    async def current(self, records: RecordSource) -> LayoutRecord:
        """The record to read by: this copy, first refreshed through `records` when due. While
        one caller refreshes, the others keep the copy if it is younger than `max_age`."""
        age = self._clock() - self._fetched_at
        record = self._record
        if record is not None and (age < self.refresh_after or (self._refreshing and age < self.max_age)):
            return record
        self._refreshing = True
        try:
            started = self._clock()
            self.observed(await records.read())
            installed = self._record
            assert installed is not None
            # Acknowledged only once installed: the other readers, which keep the copy while
            # this refresh is in flight, already read by it when the migrator sees the note.
            if self.node_id is not None:
                await records.acknowledge(self.node_id, installed.generation)
        except Exception:
            # A refresh that failed (busy database), in its read or its acknowledgement: the
            # copy (perhaps just moved on) while young; its age is not renewed, as the migrator
            # may count an unacknowledged node as silent.
            if self._record is not None and self._clock() - self._fetched_at < self.max_age:
                return self._record
            raise
        finally:
            self._refreshing = False
        self._fetched_at = max(self._fetched_at, started)
        return installed

    def settled(self) -> LayoutRecord | None:
        """The copy, while it may be read by (younger than `max_age`) and its phase is steady:
        what a read elsewhere than on the primary (a replica, which cannot acknowledge) may go
        by. None: read on the primary, which refreshes the copy."""
        record = self._record
        if record is None or self._clock() - self._fetched_at >= self.max_age:
            return None
        return record if record.phase is Phase.STEADY else None

    def observed(self, record: LayoutRecord) -> None:
        """A record read from the database (by a refresh, or by a write in its transaction): a
        later generation replaces the copy at once."""
        if self._record is None or record.generation > self._record.generation:
            self._record = record


class LayoutProfiles:
    def __init__(
        self,
        repositories: Mapping[Layout, LayoutProfileRepository],
        read_record: Callable[[], Awaitable[LayoutRecord]],
    ) -> None:
        self._repositories = repositories
        self._read_record = read_record
        self._layouts: tuple[LayoutProfileRepository, LayoutProfileRepository | None] | None = None

    async def _targets(self) -> tuple[LayoutProfileRepository, LayoutProfileRepository | None]:
        if self._layouts is None:
            try:
                record = await self._read_record()
            except LayoutMismatch as error:  # a later Keel's phase, or a record repaired wrong
                raise Unavailable(f"This node cannot follow the profiles' layout record: {error}") from error
            first, mirror = record.writes_to()
            self._layouts = (
                self._repositories[first],
                self._repositories[mirror] if mirror is not None else None,
            )
        return self._layouts

    async def get(self, profile_id: str) -> Profile | None:
        first, _ = await self._targets()
        return await first.get(profile_id)

    async def find(self, query: ProfileQuery) -> list[Profile]:
        first, _ = await self._targets()
        return await first.find(query)

    async def add(self, profile: Profile) -> None:
        first, mirror = await self._targets()
        await first.add(profile)
        if mirror is not None:
            await mirror.put(profile)

    async def update(self, profile: Profile, expected_version: int) -> None:
        first, mirror = await self._targets()
        await first.update(profile, expected_version)
        if mirror is not None:
            await mirror.put(profile)
