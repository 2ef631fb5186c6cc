"""The online migration between layouts (keel.storage.layout_migration), on SQLite and PostgreSQL,
in both directions: under concurrent writes and reads through a serving node's store, stopped and
resumed, rolled back from every phase, mending what differs, and waiting for the serving nodes.
The end-to-end version (a served Keel, the workload's history checker, a kill -9 of the migrator)
is tests/e2e/test_layout_migration_served.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keel.bootstrap.core import open_store, open_unregistered_store
from keel.bootstrap.layout import SQLITE_BATCH_PAUSE_S, with_migrator
from keel.config import Settings
from keel.domain.errors import Conflict, Unavailable, VersionMismatch
from keel.domain.profile import Email, Profile
from keel.service.ports import Store
from keel.storage.layout_migration import (
    LayoutMigrator,
    MigrationRefused,
    NodesBehind,
    Report,
    checksum,
)
from keel.storage.layouts import Layout, Phase
from keel.storage.migrations.runner import migrate
from keel.storage.migrator_lock import MigratorBusy
from keel.storage.sqlite.store import SqliteStore
from tests.integration.conftest import observer
from tests.integration.test_migrations_up_and_down import database, query
from tests.integration.test_repository_contract import NOW, make_profile

DIRECTIONS = [("normalized", "document"), ("document", "normalized")]


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(params=DIRECTIONS, ids=["to-document", "to-normalized"])
def direction(request: pytest.FixtureRequest) -> tuple[Layout, Layout]:
    source, target = request.param
    return Layout(source), Layout(target)


@pytest.fixture
async def url(
    kind: str, direction: tuple[Layout, Layout], tmp_path: Path, request: pytest.FixtureRequest
) -> str:
    address = await database(kind, tmp_path, request, f"keel_layout_migration_{direction[0]}")
    await asyncio.to_thread(migrate, address, layout=direction[0].value)
    return address


@pytest.fixture
async def node(url: str, direction: tuple[Layout, Layout]) -> AsyncIterator[Store]:
    """A serving node's store (it registers, reads through its copy of the record)."""
    store = await open_store(Settings(database_url=url, storage_layout=direction[0].value), observer("node"))
    yield store
    await store.close()


@pytest.fixture
async def migrator_store(url: str, direction: tuple[Layout, Layout]) -> AsyncIterator[Any]:
    store = await open_unregistered_store(
        Settings(database_url=url, storage_layout=direction[0].value), observer("migrator")
    )
    yield store
    await store.close()


def numbered(n: int) -> Profile:
    return make_profile(handle=f"user_{n:05d}", email=f"u{n}@example.com")


async def seed(store: Store, count: int) -> dict[str, Profile]:
    """`count` profiles, every seventh soft-deleted; what was stored, by id."""
    stored: dict[str, Profile] = {}
    for n in range(count):
        profile = numbered(n)
        async with store.unit_of_work() as uow:
            await uow.profiles.add(profile)
            if n % 7 == 0:
                deleted = profile.delete(NOW + timedelta(seconds=1))
                await uow.profiles.update(deleted, profile.version)
                profile = deleted
            await uow.commit()
        stored[profile.id] = profile
    return stored


async def layout_contents(store: Any, layout: Layout) -> dict[str, str]:
    """Every profile `layout` holds (soft-deleted ones too), as checksums by id."""
    async with store.unit_of_work(read_only=True) as unit:
        rows = await unit.profile_layouts[layout].scan(None, 10**9)
    return {p.id: checksum(p) for p in rows}


class Traffic:
    """Writes and reads through a serving node while a migration runs: creates, patches and soft
    deletes (each write's outcome known: committed or refused), and reads that must never see a
    version older than one already committed before the read began."""

    def __init__(self, store: Store, stored: dict[str, Profile], seed: int) -> None:
        self.store = store
        self.expected = dict(stored)  # what every committed write left, by id
        self.rng = random.Random(seed)
        self.next = 100_000
        self.writes = 0
        self.reads = 0
        self.stale_reads: list[tuple[str, int, int]] = []
        self.stop = asyncio.Event()
        self.phase = Phase.STEADY  # the migration's, as its last report said
        self.writes_in: dict[Phase, int] = {}

    def follow(self, report: Report) -> None:
        self.phase = report.record.phase

    async def run(self) -> None:
        await asyncio.gather(self._writer(), self._writer(), self._reader())

    async def _writer(self) -> None:
        while not self.stop.is_set():
            choice = self.rng.random()
            try:
                if choice < 0.3:
                    await self._create()
                else:
                    await self._revise(delete=choice > 0.93)
            except (VersionMismatch, Conflict, Unavailable):
                pass  # refused whole (or the database busy): nothing committed, `expected` unchanged
            await asyncio.sleep(0.002)

    async def burst(self, seconds: float) -> None:
        """The migrator's pause between two batches, spent writing: so every phase of the
        migration sees writes, whatever the scheduling (a create, a revision and a read)."""
        for operation in (self._create, lambda: self._revise(delete=False), self._read_one):
            with contextlib.suppress(VersionMismatch, Conflict, Unavailable):  # as the writers
                await operation()

    async def _create(self) -> None:
        self.next += 1
        profile = numbered(self.next)
        async with self.store.unit_of_work() as uow:
            await uow.profiles.add(profile)
            await uow.commit()
        self._committed(profile)

    def _committed(self, profile: Profile) -> None:
        self.expected[profile.id] = profile
        self.writes += 1
        self.writes_in[self.phase] = self.writes_in.get(self.phase, 0) + 1

    async def _revise(self, *, delete: bool) -> None:
        profile_id = self.rng.choice(list(self.expected))
        async with self.store.unit_of_work() as uow:
            current = await uow.profiles.get(profile_id)
            if current is None:
                return
            now = current.updated_at + timedelta(seconds=1)
            fields = dataclasses.replace(current.fields, bio=f"rev {current.version + 1}")
            if current.version % 3 == 0:  # and its addresses: the side tables change too
                fields = dataclasses.replace(
                    fields,
                    emails=(Email(f"{profile_id.lower()}.{current.version}@example.org", primary=True),),
                )
            changed = current.delete(now) if delete else current.revise(fields, now)
            await uow.profiles.update(changed, current.version)
            await uow.commit()
        self._committed(changed)

    async def _reader(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Unavailable):
                await self._read_one()
            await asyncio.sleep(0.002)

    async def _read_one(self) -> None:
        profile_id = self.rng.choice(list(self.expected))
        floor = self.expected[profile_id]
        async with self.store.unit_of_work(read_only=True) as uow:
            seen = await uow.profiles.get(profile_id)
        self.reads += 1
        if floor.deleted_at is None and (seen is None or seen.version < floor.version):
            self.stale_reads.append((profile_id, floor.version, seen.version if seen else -1))


async def test_a_migration_under_live_writes_and_reads_loses_nothing(
    node: Store, migrator_store: Any, direction: tuple[Layout, Layout]
) -> None:
    source, target = direction
    traffic = Traffic(node, await seed(node, 240), seed=7)
    reports: list[Report] = []

    def report(r: Report) -> None:
        reports.append(r)
        traffic.follow(r)

    # Between two batches the migrator pauses (on SQLite as `keel layout` does there), and the
    # pause is spent writing and reading through the node: every phase sees writes, whatever
    # the scheduling; the background traffic writes and reads concurrently besides.
    migrator = LayoutMigrator(
        migrator_store,
        batch=20,
        pause_s=SQLITE_BATCH_PAUSE_S if isinstance(migrator_store, SqliteStore) else 0.001,
        report=report,
        sleep=traffic.burst,
    )
    running = asyncio.create_task(traffic.run())
    try:
        record = await migrator.migrate(target)
    finally:
        traffic.stop.set()
        await running
    assert (record.read_layout, record.phase, record.target_layout) == (target, Phase.STEADY, None)
    phases = [r.record.phase for r in reports]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        Phase.DUAL_WRITE,
        Phase.BACKFILL,
        Phase.VERIFY,
        Phase.SWITCHED,
        Phase.STEADY,
    ], phases
    backfilled = [
        r.progress for r in reports if r.progress is not None and r.progress.phase is Phase.BACKFILL
    ]
    assert len(backfilled) > 5  # copied in many batches while the traffic ran
    assert traffic.reads > 20, traffic.reads
    for phase in (Phase.BACKFILL, Phase.VERIFY):
        assert traffic.writes_in.get(phase, 0) >= 5, traffic.writes_in
    assert traffic.stale_reads == []
    expected = {profile_id: checksum(p) for profile_id, p in traffic.expected.items()}
    assert await layout_contents(migrator_store, target) == expected
    # Writes after the finish go to the target alone: the old layout is no longer written.
    late = numbered(999_999)
    async with node.unit_of_work() as uow:
        await uow.profiles.add(late)
        await uow.commit()
    assert late.id in await layout_contents(migrator_store, target)
    assert late.id not in await layout_contents(migrator_store, source)
    assert migrator.mismatches == []


async def test_a_stopped_migration_resumes_where_it_left_off(
    node: Store, migrator_store: Any, direction: tuple[Layout, Layout]
) -> None:
    _, target = direction
    stored = await seed(node, 120)

    class Crash(Exception):
        pass

    def crash_after_three_batches(report: Report) -> None:
        if (
            report.progress is not None
            and report.progress.phase is Phase.BACKFILL
            and report.progress.done >= 30
        ):
            raise Crash

    with pytest.raises(Crash):
        await LayoutMigrator(migrator_store, batch=10, report=crash_after_three_batches).migrate(target)
    stopped = LayoutMigrator(migrator_store)
    assert (await stopped.record()).phase is Phase.BACKFILL
    progress = await stopped.progress()
    assert progress is not None
    assert (progress.done, progress.total) == (30, 120)
    assert len(await layout_contents(migrator_store, target)) == 30

    reports: list[Report] = []
    record = await LayoutMigrator(migrator_store, batch=10, report=reports.append).migrate(target)
    assert record.read_layout is target
    first = next(r.progress for r in reports if r.progress is not None)
    assert (first.phase, first.done) == (Phase.BACKFILL, 40)  # the fourth batch, not the first again
    assert await layout_contents(migrator_store, target) == {i: checksum(p) for i, p in stored.items()}


@pytest.mark.parametrize("stop_at", [Phase.DUAL_WRITE, Phase.BACKFILL, Phase.VERIFY, Phase.SWITCHED])
async def test_a_rollback_from_any_phase_returns_to_the_source_with_every_write(
    node: Store, migrator_store: Any, direction: tuple[Layout, Layout], stop_at: Phase
) -> None:
    source, target = direction
    traffic = Traffic(node, await seed(node, 60), seed=11)
    migrator = LayoutMigrator(migrator_store, batch=10)
    await migrator.migrate(target, until=stop_at)
    assert (await migrator.record()).phase is stop_at
    for _ in range(10):
        await traffic._create()
        await traffic._revise(delete=False)
    record = await migrator.rollback()
    assert (record.read_layout, record.phase, record.target_layout) == (source, Phase.STEADY, None)
    # Run again (say after a kill -9 that came after its commit), it does not migrate to the
    # layout just abandoned: it refuses.
    with pytest.raises(MigrationRefused, match="No migration to roll back"):
        await migrator.rollback()
    assert (await migrator.record()).read_layout is source
    for _ in range(5):
        await traffic._revise(delete=False)
    expected = {profile_id: checksum(p) for profile_id, p in traffic.expected.items()}
    assert await layout_contents(migrator_store, source) == expected
    # A node reads the source again, and a new migration starts from an emptied target.
    some_id = next(iter(traffic.expected))
    async with node.unit_of_work(read_only=True) as uow:
        assert (await uow.profiles.get(some_id)) == (
            traffic.expected[some_id] if traffic.expected[some_id].deleted_at is None else None
        )
    await migrator.migrate(target)
    assert await layout_contents(migrator_store, target) == expected


async def test_after_a_finish_rollback_migrates_back_and_drop_deletes_only_the_unused_layout(
    node: Store, migrator_store: Any, direction: tuple[Layout, Layout]
) -> None:
    source, target = direction
    stored = await seed(node, 30)
    migrator = LayoutMigrator(migrator_store, batch=8)
    await migrator.migrate(target)
    with pytest.raises(MigrationRefused, match="in use"):
        await migrator.drop(target)
    record = await migrator.rollback()
    assert (record.read_layout, record.phase) == (source, Phase.STEADY)
    expected = {i: checksum(p) for i, p in stored.items()}
    assert await layout_contents(migrator_store, source) == expected
    assert await migrator.drop(target) == 30
    assert await layout_contents(migrator_store, target) == {}
    with pytest.raises(MigrationRefused, match="No migration to roll back"):
        await migrator.rollback()


async def test_verify_mends_every_difference_and_reports_it(
    node: Store, migrator_store: Any, url: str, direction: tuple[Layout, Layout]
) -> None:
    _, target = direction
    stored = await seed(node, 40)
    migrator = LayoutMigrator(migrator_store, batch=9)
    await migrator.migrate(target, until=Phase.VERIFY)  # backfilled, not yet compared
    ids = sorted(stored)
    changed, missing = ids[3], ids[17]
    extra = numbered(777)
    # Three kinds of difference behind the migrator's back: a changed row, a missing one, one
    # the source never held.
    async with migrator_store.unit_of_work() as unit:
        repository = unit.profile_layouts[target]
        altered = dataclasses.replace(stored[changed], version=stored[changed].version + 5)
        await repository.put(altered)
        await repository.remove([missing])
        await repository.put(extra)
        await unit.commit()
    assert await layout_contents(migrator_store, target) != {i: checksum(p) for i, p in stored.items()}
    reports: list[Report] = []
    checker = LayoutMigrator(migrator_store, batch=9, report=reports.append)
    await checker.migrate(target)
    assert sorted(checker.mismatches) == sorted([changed, missing, extra.id])
    assert any(r.note == "verify mended 3 profiles" for r in reports)
    assert await layout_contents(migrator_store, target) == {i: checksum(p) for i, p in stored.items()}


async def test_the_finish_waits_for_every_serving_node_that_still_reads_the_old_layout(
    node: Store, migrator_store: Any, url: str, direction: tuple[Layout, Layout]
) -> None:
    _, target = direction
    await seed(node, 5)
    migrator = LayoutMigrator(migrator_store, node_wait_s=0.0)
    switched = await migrator.migrate(target, until=Phase.SWITCHED)
    # A node that read the record of the verify phase just now (by the database's clock), and
    # one silent for ten seconds: longer than a node may use its copy (LayoutView.max_age).
    await query(
        url,
        "INSERT INTO storage_layout_nodes (node_id, generation, seen_at) VALUES ($1, $2, $3), ($4, $5, $6)",
        "behind",
        switched.generation - 1,
        await _database_epoch(url),
        "silent",
        switched.generation - 1,
        await _database_epoch(url) - 10.0,
    )
    with pytest.raises(NodesBehind, match=r"behind \(generation") as refused:
        await migrator.migrate(target)
    assert "silent" not in str(refused.value)
    assert (await migrator.record()) == switched  # nothing changed
    await query(
        url, "UPDATE storage_layout_nodes SET generation = $1 WHERE node_id = 'behind'", switched.generation
    )
    assert (await migrator.migrate(target)).read_layout is target


async def _database_epoch(url: str) -> float:
    if url.startswith("sqlite"):
        (row,) = await query(url, "SELECT (julianday('now') - 2440587.5) * 86400.0 AS now")
    else:
        (row,) = await query(url, "SELECT extract(epoch FROM clock_timestamp())::float8 AS now")
    return float(row["now"])


async def test_a_serving_node_acknowledges_the_record_it_reads_by(
    url: str, migrator_store: Any, direction: tuple[Layout, Layout]
) -> None:
    node = await open_store(Settings(database_url=url, storage_layout=direction[0].value), observer("node"))
    (profile,) = (await seed(node, 1)).values()
    async with node.unit_of_work(read_only=True) as uow:
        await uow.profiles.get(profile.id)
    migrator = LayoutMigrator(migrator_store)
    (seen,) = await migrator.nodes()
    assert seen.generation == (await migrator.record()).generation
    await node.close()  # a node that stops serving takes its row away
    assert await migrator.nodes() == []


async def test_a_second_layout_command_is_refused_while_one_runs(
    url: str, direction: tuple[Layout, Layout]
) -> None:
    settings = Settings(database_url=url, storage_layout=direction[0].value)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold(migrator: LayoutMigrator) -> None:
        entered.set()
        await release.wait()

    holder = asyncio.create_task(with_migrator(settings, hold))
    await entered.wait()
    try:
        with pytest.raises(MigratorBusy, match="Another `keel layout` command is running"):
            await with_migrator(settings, lambda migrator: migrator.migrate(direction[1]))
        # `status` reads only: it does not need the lock.
        assert (
            await with_migrator(settings, lambda m: m.record(), exclusive=False)
        ).read_layout is direction[0]
    finally:
        release.set()
        await holder
    assert (await with_migrator(settings, lambda m: m.migrate(direction[1]))).read_layout is direction[1]
