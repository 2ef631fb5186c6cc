"""What each phase of the layout record tells a node (keel.storage.layouts), and how a node's
copy of the record is refreshed and fenced (keel.storage.layout_view), on a virtual clock."""

from __future__ import annotations

import pytest

from keel.storage.layout_view import LayoutView
from keel.storage.layouts import Layout, LayoutMismatch, LayoutRecord, Phase, check_layout, record_from_row

N, D = Layout.NORMALIZED, Layout.DOCUMENT


@pytest.mark.parametrize(
    ("phase", "reads", "writes"),
    [
        (Phase.DUAL_WRITE, N, (N, D)),
        (Phase.BACKFILL, N, (N, D)),
        (Phase.VERIFY, N, (N, D)),
        (Phase.SWITCHED, D, (D, N)),
    ],
)
def test_each_migration_phase_names_what_a_node_reads_and_writes(
    phase: Phase, reads: Layout, writes: tuple[Layout, Layout]
) -> None:
    record = LayoutRecord(N, phase, D, 3)
    assert record.reads_from() is reads
    assert record.writes_to() == writes
    # The layout a write checks its version in is always the one reads go to.
    assert record.writes_to()[0] is record.reads_from()


def test_steady_reads_and_writes_one_layout() -> None:
    assert LayoutRecord(D, Phase.STEADY, None).reads_from() is D
    assert LayoutRecord(D, Phase.STEADY, None).writes_to() == (D, None)


def test_a_node_of_either_layout_may_start_during_a_migration_and_only_the_read_one_outside() -> None:
    migrating = LayoutRecord(N, Phase.BACKFILL, D)
    check_layout(migrating, N, "db")
    check_layout(migrating, D, "db")
    check_layout(LayoutRecord(N, Phase.STEADY, None), N, "db")
    with pytest.raises(LayoutMismatch, match="keeps its profiles in the normalized layout"):
        check_layout(LayoutRecord(N, Phase.STEADY, None), D, "db")


@pytest.mark.parametrize(
    ("read", "phase", "target"),
    [
        ("normalized", "backfill", None),
        ("normalized", "switched", "normalized"),
        ("document", "steady", "normalized"),
    ],
)
def test_a_record_whose_phase_and_target_disagree_is_refused(
    read: str, phase: str, target: str | None
) -> None:
    with pytest.raises(LayoutMismatch, match="Repair the record"):
        record_from_row(read, phase, target, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """The database's record, as a node's refresh reads it; counts the reads and keeps the
    acknowledgements, each with the record another reader of the node got as it was sent."""

    def __init__(self, record: LayoutRecord, view: LayoutView | None = None) -> None:
        self.record = record
        self.reads = 0
        self.view = view
        self.acknowledged: list[tuple[str, int, int | None]] = []

    async def read(self) -> LayoutRecord:
        self.reads += 1
        return self.record

    async def acknowledge(self, node_id: str, generation: int) -> None:
        # Another unit of work reading meanwhile (the refresh is in flight): what does it get?
        meanwhile = (await self.view.current(self)).generation if self.view is not None else None
        self.acknowledged.append((node_id, generation, meanwhile))


async def test_a_nodes_copy_is_refreshed_once_due_and_acknowledged_under_its_name() -> None:
    clock = Clock()
    source = Source(LayoutRecord(N, Phase.VERIFY, D, 4))
    view = LayoutView("node-1", clock)
    assert (await view.current(source)).phase is Phase.VERIFY
    assert (source.reads, [a[:2] for a in source.acknowledged]) == (1, [("node-1", 4)])
    source.record = LayoutRecord(N, Phase.SWITCHED, D, 5)
    clock.now += LayoutView.refresh_after - 0.01
    assert (await view.current(source)).phase is Phase.VERIFY  # not due yet: the copy
    assert source.reads == 1
    clock.now += 0.02
    assert (await view.current(source)).phase is Phase.SWITCHED
    assert (source.reads, [a[:2] for a in source.acknowledged]) == (2, [("node-1", 4), ("node-1", 5)])


async def test_a_generation_is_acknowledged_only_once_every_reader_of_the_node_reads_by_it() -> None:
    # The migrator stops writing a layout once every node has acknowledged a record that reads
    # elsewhere: a reader that still got the older copy after that note could miss a write.
    clock = Clock()
    view = LayoutView("node-1", clock)
    source = Source(LayoutRecord(N, Phase.VERIFY, D, 4))
    await view.current(source)
    source.view = view  # from now on, a unit of work reads while each acknowledgement is sent
    source.record = LayoutRecord(N, Phase.SWITCHED, D, 5)
    clock.now += LayoutView.refresh_after
    assert (await view.current(source)).generation == 5
    assert source.acknowledged == [("node-1", 4, None), ("node-1", 5, 5)]


async def test_a_write_that_read_a_later_record_moves_the_copy_on_and_an_older_one_never_back() -> None:
    clock = Clock()
    source = Source(LayoutRecord(N, Phase.VERIFY, D, 4))
    view = LayoutView(None, clock)
    await view.current(source)
    view.observed(LayoutRecord(N, Phase.SWITCHED, D, 5))
    assert (await view.current(source)).generation == 5
    clock.now += LayoutView.refresh_after
    assert (await view.current(source)).generation == 5  # the database's older answer is ignored
    assert (source.reads, source.acknowledged) == (2, [])  # the migrator's store acknowledges nothing


async def test_while_one_refresh_is_in_flight_others_keep_the_copy_only_until_it_is_too_old() -> None:
    clock = Clock()
    view = LayoutView("node-1", clock)
    source = Source(LayoutRecord(N, Phase.STEADY, None, 1))
    await view.current(source)
    view._refreshing = True  # another unit of work is refreshing it now
    clock.now += LayoutView.refresh_after
    await view.current(source)
    assert source.reads == 1  # not yet too old: the copy
    clock.now += LayoutView.max_age
    await view.current(source)
    assert source.reads == 2  # too old to read by: refreshed by this caller too


async def test_reads_may_leave_the_primary_only_by_a_young_copy_of_a_steady_record() -> None:
    """`settled`: what a read on a replica goes by. A replica can neither refresh the copy (a
    refresh acknowledges) nor be trusted with a layout a migration is filling."""
    clock = Clock()
    view = LayoutView("node-1", clock)
    assert view.settled() is None  # no copy yet
    source = Source(LayoutRecord(N, Phase.STEADY, None, 1))
    await view.current(source)
    assert view.settled() == LayoutRecord(N, Phase.STEADY, None, 1)
    clock.now += LayoutView.max_age
    assert view.settled() is None  # too old to read by
    source.record = LayoutRecord(N, Phase.DUAL_WRITE, D, 2)
    await view.current(source)
    assert view.settled() is None  # a migration under way: the primary reads
