"""The online migration of profiles between layouts (`keel layout migrate|rollback|drop`).

Phases (keel.storage.layouts has what each means for a serving node):

1. `steady` → `dual_write`: the target's tables are emptied (nothing writes them while steady),
   then the record names the target: every later write goes to both layouts, in its own
   transaction (it reads the record share-locked, so the change waits for writes in flight);
2. `backfill`: batches copy the older profiles (soft-deleted ones too) in id order, up to the
   greatest id stored when the phase began (every later one was written to both), each batch
   one transaction that share-locks its source rows (then reads them) and copies a row only
   where the target has no row or an older version, so a concurrent write or erasure is never
   undone; progress (the last id copied) is recorded in the batch's transaction, so a killed
   migrator resumes there;
3. `verify`: every profile is compared in both layouts by a checksum of the whole stored
   profile (a SHA-256 of its document, version and deletion time) in batches that lock the
   rows, to the end of both layouts; a difference is mended (the source's copy written
   over), a row only the target holds is deleted, and a second pass must find none; the
   counts must agree in one snapshot;
4. `switched`: reads go to the target; writes still go to both, so `rollback` is instant;
5. finish: once every serving node has acknowledged `switched` (or has been silent longer than
   a node may use its copy of the record), the record becomes `steady` on the target and the
   old layout is no longer written. Its rows stay until `keel layout drop` deletes them; until
   then `rollback` migrates back (the same phases in the other direction).

Every step is a transaction that checks the record's generation: two migrators cannot both act.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol, TypeVar

from keel.domain.errors import ConcurrentModification
from keel.domain.profile import Profile
from keel.storage.documents import profile_document
from keel.storage.layout_records import NodeSeen, Progress, SqlLayoutRecords
from keel.storage.layout_view import LayoutProfileRepository, LayoutView
from keel.storage.layouts import Layout, LayoutRecord, Phase

# How long past `LayoutView.max_age` a silent node is still waited for (clock rates, a read
# sent just before its copy expired).
SILENCE_MARGIN_S = 1.0
_VERIFY_PASSES = 3
_ALL = 2**31 - 1  # a scan's limit that is no limit
_CLEAR_BATCH = 5000
_BATCH_ATTEMPTS = 5
T = TypeVar("T")
# What the progress row says in `steady` of the layout that is not read: a finished migration's
# old copy (rollback migrates back to it), or a rolled-back migration's leftovers.
FINISHED = "finished"
ROLLED_BACK = "rolled-back"


class MigrationUnit(Protocol):
    layout_records: SqlLayoutRecords

    @property
    def profile_layouts(self) -> Mapping[Layout, LayoutProfileRepository]: ...

    async def commit(self) -> None: ...


class MigrationStore(Protocol):
    def unit_of_work(self, *, read_only: bool = False) -> AbstractAsyncContextManager[MigrationUnit]: ...

    async def layout_record(self) -> LayoutRecord | None: ...


class MigrationRefused(RuntimeError):
    """The record does not allow what was asked (another migration under way, nothing to roll
    back, a layout still read): nothing was changed."""


class NodesBehind(RuntimeError):
    """Serving nodes kept answering without acknowledging the record a step must wait for."""


class VerificationFailed(RuntimeError):
    """The layouts still differ after mending: the migration stays in `verify`."""


def checksum(profile: Profile) -> str:
    """The stored profile's fingerprint: equal in both layouts exactly when they hold the same.
    Keys sorted: PostgreSQL's jsonb keeps an object's keys in an order of its own."""
    deleted = profile.deleted_at.astimezone(UTC).isoformat() if profile.deleted_at is not None else "-"
    document = json.dumps(json.loads(profile_document(profile)), sort_keys=True, separators=(",", ":"))
    text = f"{profile.id}\n{profile.version}\n{deleted}\n{document}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Report:
    """What a step tells the operator (the CLI draws it; tests collect it)."""

    record: LayoutRecord
    progress: Progress | None
    rows_per_second: float | None = None
    note: str | None = None


class LayoutMigrator:
    def __init__(
        self,
        store: MigrationStore,
        *,
        batch: int = 500,
        rows_per_second: float | None = None,
        pause_s: float = 0.0,
        report: Callable[[Report], None] = lambda _: None,
        node_wait_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._batch = batch
        self._rate = rows_per_second
        # At least this long between two batches: on SQLite a serving node's writer waits for
        # the database lock by polling (sleeping up to 100 ms), and batches taken back to back
        # would starve it.
        self._pause_s = pause_s
        self._report = report
        self._node_wait_s = node_wait_s
        self._sleep = sleep
        self._clock = clock
        self.mismatches: list[str] = []  # ids verify found different in the target, in order

    async def record(self) -> LayoutRecord:
        async with self._store.unit_of_work(read_only=True) as unit:
            return await unit.layout_records.read()

    async def migrate(self, to: Layout, *, until: Phase | None = None) -> LayoutRecord:
        """Move the profiles to `to`, from wherever the record stands (a killed migration
        resumes); stop once `until` is reached (None: run to the end, `steady` on `to`)."""
        record = await self.record()
        while True:
            if until is not None and record.phase is until and record.target_layout is to:
                return record
            if record.phase is Phase.STEADY:
                if record.read_layout is to:
                    return record
                record = await self._start(record, to)
            elif record.target_layout is not to:
                raise MigrationRefused(
                    f"A migration to the {record.target_layout} layout is under way (phase {record.phase}):"
                    " run `keel layout migrate` to it, or `keel layout rollback`."
                )
            elif record.phase is Phase.DUAL_WRITE:
                record = await self._enter(record, Phase.BACKFILL, await self._fresh_progress(Phase.BACKFILL))
            elif record.phase is Phase.BACKFILL:
                await self._backfill(record)
                record = await self._enter(record, Phase.VERIFY, await self._fresh_progress(Phase.VERIFY))
            elif record.phase is Phase.VERIFY:
                await self._verify(record)
                record = await self._enter(record, Phase.SWITCHED, None)
            else:  # switched
                await self._wait_for_nodes(record)
                old_layout = record.read_layout
                record = await self._enter(record, Phase.STEADY, _left(FINISHED, old_layout), read_layout=to)
                self._report(Report(record, None, note=f"finished: profiles live in the {to} layout"))

    async def rollback(self) -> LayoutRecord:
        """Undo the migration under way: reads go back to the layout they came from, then it is
        the only one written. After a finish (while the old layout's rows are there), migrate
        back. Run again after it has rolled back, it refuses: the target's rows left by a
        rolled-back migration are not a copy to go back to."""
        record = await self.record()
        if record.phase is Phase.STEADY:
            other = Layout.DOCUMENT if record.read_layout is Layout.NORMALIZED else Layout.NORMALIZED
            progress = await self.progress()
            counts = await self.counts()
            finished = progress is not None and progress.after_id == FINISHED and progress.through_id == other
            if not finished or counts[other] == 0:
                raise MigrationRefused(
                    f"No migration to roll back: profiles live in the {record.read_layout} layout, and the"
                    f" {other} layout holds {counts[other]} rows"
                    + (
                        " left by a rolled-back migration (`keel layout drop` deletes them)."
                        if counts[other]
                        else "."
                    )
                )
            self._report(Report(record, None, note=f"the migration finished: migrating back to {other}"))
            return await self.migrate(other)
        abandoned = record.target_layout
        assert abandoned is not None
        if record.phase is Phase.SWITCHED:
            record = await self._enter(record, Phase.VERIFY, None)
            self._report(Report(record, None, note=f"reads are back on the {record.read_layout} layout"))
        # Nodes may still read the target (by a copy of `switched`, from this run or a killed
        # one): no layout stops being written before every node has moved off it.
        await self._wait_for_nodes(record)
        record = await self._enter(record, Phase.STEADY, _left(ROLLED_BACK, abandoned))
        self._report(
            Report(record, None, note=f"rolled back: profiles live in the {record.read_layout} layout")
        )
        return record

    async def drop(self, layout: Layout) -> int:
        """Delete the rows of `layout`, which must be neither read nor written, in batches (writes
        go on meanwhile). How many profiles it held."""
        record = await self.record()
        if record.phase is not Phase.STEADY or record.read_layout is layout:
            raise MigrationRefused(
                f"The {layout} layout is in use (read layout {record.read_layout}, phase {record.phase})."
            )
        count = (await self.counts())[layout]
        await self._clear(record, layout)
        async with self._store.unit_of_work() as unit:
            await unit.layout_records.set_progress(None)
            await unit.commit()
        return count

    async def nodes(self) -> list[NodeSeen]:
        async with self._store.unit_of_work(read_only=True) as unit:
            return await unit.layout_records.nodes()

    async def recorded(self) -> LayoutRecord | None:
        """The record as `keel layout status` shows it; None before the layouts' revision."""
        if await self._store.layout_record() is None:
            return None
        return await self.record()  # with its generation

    async def progress(self) -> Progress | None:
        async with self._store.unit_of_work(read_only=True) as unit:
            return await unit.layout_records.progress()

    async def counts(self) -> dict[Layout, int]:
        async with self._store.unit_of_work(read_only=True) as unit:
            return await unit.layout_records.counts()

    # ------------------------------------------------------------------------------------

    async def _start(self, record: LayoutRecord, to: Layout) -> LayoutRecord:
        # Emptied first, in batches: nothing writes the target while steady, and no batch
        # holds the record (or anything a write needs) for long.
        await self._clear(record, to)
        record = await self._enter(record, Phase.DUAL_WRITE, None, target=to)
        self._report(
            Report(record, None, note=f"dual-write: every write goes to {record.read_layout} and {to}")
        )
        return record

    async def _clear(self, record: LayoutRecord, layout: Layout) -> None:
        """Delete `layout`'s rows, `_CLEAR_BATCH` profiles per transaction, each checking that
        the record still leaves that layout unwritten."""
        while True:
            async with self._store.unit_of_work() as unit:
                self._check(await unit.layout_records.read(lock=_for_share(unit)), record)
                deleted = await unit.layout_records.clear_some(layout, _CLEAR_BATCH)
                await unit.commit()
            if deleted < _CLEAR_BATCH:
                return

    async def _enter(
        self,
        record: LayoutRecord,
        phase: Phase,
        progress: Progress | None,
        *,
        target: Layout | None = None,
        read_layout: Layout | None = None,
    ) -> LayoutRecord:
        """One transaction: the record changed to `phase` (only if still `record`) with its progress."""
        changed = LayoutRecord(
            read_layout or record.read_layout,
            phase,
            None if phase is Phase.STEADY else (target or record.target_layout),
            record.generation,
        )
        async with self._store.unit_of_work() as unit:
            new = await unit.layout_records.change(record, changed)
            await unit.layout_records.set_progress(progress)
            await unit.commit()
        self._report(Report(new, progress))
        return new

    async def _fresh_progress(self, phase: Phase) -> Progress:
        async with self._store.unit_of_work(read_only=True) as unit:
            record = await unit.layout_records.read()
            total = (await unit.layout_records.counts())[record.read_layout]
            through = await unit.layout_records.last_id(record.read_layout)
        return Progress(phase, None, through or "", 0, total, 0)

    async def _progress(self, phase: Phase) -> Progress:
        async with self._store.unit_of_work(read_only=True) as unit:
            progress = await unit.layout_records.progress()
        if progress is None or progress.phase is not phase:
            return await self._fresh_progress(phase)
        return progress

    async def _backfill(self, record: LayoutRecord) -> None:
        await self._batches(record, await self._progress(Phase.BACKFILL), self._backfill_batch)

    async def _batches(
        self,
        record: LayoutRecord,
        progress: Progress,
        batch: Callable[[LayoutRecord, Progress], Awaitable[tuple[Progress, int]]],
    ) -> Progress:
        """`batch` after `batch` (each retried, reported, paced) until one comes back short."""
        pacer = _Pacer(self._rate, self._pause_s, self._sleep, self._clock)
        while True:
            progress, count = await self._retrying(functools.partial(batch, record, progress))
            self._report(Report(record, progress, pacer.rate()))
            if count < self._batch:
                return progress
            await pacer.after(count)

    async def _backfill_batch(self, record: LayoutRecord, progress: Progress) -> tuple[Progress, int]:
        assert record.target_layout is not None
        async with self._store.unit_of_work() as unit:
            self._check(await unit.layout_records.read(lock=_for_share(unit)), record)
            source = unit.profile_layouts[record.read_layout]
            target = unit.profile_layouts[record.target_layout]
            ids = await source.ids_after(progress.after_id, self._batch, through_id=progress.through_id)
            # Locked first, read after: a read that waited for a row lock would see the
            # row's new version with its children as they were (PostgreSQL).
            await source.lock_ids(ids)
            rows = await source.load_ids(ids)
            for profile in rows:
                await target.put(profile, only_if_newer=True)
            if ids:
                progress = Progress(
                    Phase.BACKFILL,
                    ids[-1],
                    progress.through_id,
                    progress.done + len(ids),
                    max(progress.total, progress.done + len(ids)),
                    progress.mended,
                )
                await unit.layout_records.set_progress(progress)
            await unit.commit()
        return progress, len(ids)

    async def _verify(self, record: LayoutRecord) -> None:
        """Compare every profile; mend what differs. A pass that mended anything is followed by
        one that must find nothing to mend (at most `_VERIFY_PASSES` in one run). The progress
        (`mended` counts this pass's) is recorded, so a resumed run finishes the pass it was in,
        and a pass that mended is always followed by a whole new one."""
        assert record.target_layout is not None
        progress = await self._progress(Phase.VERIFY)
        for _ in range(_VERIFY_PASSES):
            progress = await self._verify_pass(record, progress)
            counts = await self.counts()
            if progress.mended == 0 and counts[record.read_layout] == counts[record.target_layout]:
                return
            # A new pass, from the start, recorded before it begins.
            progress = Progress(Phase.VERIFY, None, progress.through_id, 0, progress.total, 0)
            async with self._store.unit_of_work() as unit:
                self._check(await unit.layout_records.read(lock=_for_share(unit)), record)
                await unit.layout_records.set_progress(progress)
                await unit.commit()
        raise VerificationFailed(
            f"The layouts still differ after {_VERIFY_PASSES} passes"
            f" (last ids mended: {', '.join(self.mismatches[-10:])});"
            " the migration stays in verify: run it again, or roll back."
        )

    async def _verify_pass(self, record: LayoutRecord, progress: Progress) -> Progress:
        """One pass over both layouts, in batches. A batch takes the source's next ids and
        the target's ids in the same range (each set read before any lock), share-locks the
        source's rows, then reads both layouts' rows for those ids: a profile created after
        the id reads is left out (it was written to both layouts in one transaction), and one
        only the target holds was there before the locks, so it is not a create in flight."""
        progress = await self._batches(record, progress, self._verify_batch)
        if progress.mended:
            self._report(Report(record, progress, note=f"verify mended {progress.mended} profiles"))
        return progress

    async def _verify_batch(self, record: LayoutRecord, progress: Progress) -> tuple[Progress, int]:
        assert record.target_layout is not None
        async with self._store.unit_of_work() as unit:
            self._check(await unit.layout_records.read(lock=_for_share(unit)), record)
            source = unit.profile_layouts[record.read_layout]
            target = unit.profile_layouts[record.target_layout]
            # To the end of both layouts, not to the phase's bound: a row only the target holds
            # is found wherever it is. Creates made meanwhile are compared too (they were
            # written to both), so the pass ends once it outpaces them.
            ids = await source.ids_after(progress.after_id, self._batch)
            last = len(ids) < self._batch
            end = None if last else ids[-1]
            theirs_ids = await target.ids_after(progress.after_id, _ALL, through_id=end)
            union = sorted(set(ids) | set(theirs_ids))
            await source.lock_ids(union)
            ours = {p.id: p for p in await source.load_ids(union)}
            theirs = {p.id: p for p in await target.load_ids(union)}
            mended = 0
            for profile_id, profile in ours.items():
                copy = theirs.pop(profile_id, None)
                if copy is None or checksum(copy) != checksum(profile):
                    self.mismatches.append(profile_id)
                    await target.put(profile)
                    mended += 1
            if theirs:  # rows only the target holds
                self.mismatches.extend(theirs)
                await target.remove(list(theirs))
                mended += len(theirs)
            progress = Progress(
                Phase.VERIFY,
                ids[-1] if ids else progress.after_id,
                progress.through_id,
                progress.done + len(ids),
                max(progress.total, progress.done + len(ids)),
                progress.mended + mended,
            )
            await unit.layout_records.set_progress(progress)
            await unit.commit()
        return progress, len(ids)

    async def _retrying(self, batch: Callable[[], Awaitable[T]]) -> T:
        """A batch again when PostgreSQL rolled it back whole (a deadlock with a write or an
        erasure, which lock rows in other orders): nothing of it was committed."""
        for attempt in range(1, _BATCH_ATTEMPTS + 1):
            try:
                return await batch()
            except ConcurrentModification:
                if attempt == _BATCH_ATTEMPTS:
                    raise
                await self._sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _check(current: LayoutRecord, expected: LayoutRecord) -> None:
        if current != expected:
            raise MigrationRefused(
                f"The layout record changed meanwhile (now {current.read_layout}/{current.phase}):"
                " another `keel layout` command? Stopped."
            )

    async def _wait_for_nodes(self, record: LayoutRecord) -> None:
        """Until every serving node has acknowledged `record` (or a later one), or been silent
        for longer than a node may use its copy; `NodesBehind` after `node_wait_s`."""
        deadline = self._clock() + self._node_wait_s
        silent_after = LayoutView.max_age + SILENCE_MARGIN_S
        waited = False
        while True:
            nodes = await self.nodes()
            behind = [n for n in nodes if n.generation < record.generation and n.seconds_ago < silent_after]
            if not behind:
                return
            if self._clock() > deadline:
                names = ", ".join(f"{n.node_id} (generation {n.generation})" for n in behind)
                raise NodesBehind(
                    f"Serving nodes still follow an older layout record: {names}. Nothing was changed;"
                    " run the command again once they have caught up (or stopped)."
                )
            if not waited:
                names = ", ".join(n.node_id for n in behind)
                self._report(Report(record, None, note=f"waiting for serving nodes to acknowledge: {names}"))
            waited = True
            await self._sleep(0.2)


class _Pacer:
    """Keeps a run under its rows-per-second budget, sleeping between batches."""

    def __init__(
        self,
        rate: float | None,
        pause_s: float,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self._budget = rate
        self._pause_s = pause_s
        self._sleep = sleep
        self._clock = clock
        self._started = clock()
        self._rows = 0

    def rate(self) -> float | None:
        elapsed = self._clock() - self._started
        return self._rows / elapsed if elapsed > 0 and self._rows else None

    async def after(self, rows: int) -> None:
        self._rows += rows
        ahead = self._rows / self._budget - (self._clock() - self._started) if self._budget else 0.0
        if max(ahead, self._pause_s) > 0:
            await self._sleep(max(ahead, self._pause_s))


def _left(how: str, layout: Layout) -> Progress:
    return Progress(Phase.STEADY, how, layout.value, 0, 0, 0)


def _for_share(unit: MigrationUnit) -> str:
    return unit.layout_records.for_share
