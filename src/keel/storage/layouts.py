"""Which layout holds the profiles, as the database records it (the `storage_layout` table).

Two layouts keep the same aggregate: `normalized` (profiles, profile_emails, profile_links) and
`document` (profile_documents, one row per profile, plus profile_document_emails for the
uniqueness of addresses). A node is configured with a layout (KEEL_STORAGE_LAYOUT) and the
database records which one is read; a node whose configuration disagrees refuses to start
rather than read tables that are not kept up to date.

The record is one row per aggregate (`name`, only `profiles` today): `read_layout`, the layout
profiles live in; `phase`, where a migration to `target_layout` stands; `generation`, counted
up by every change of the record. What each phase means for a node (`reads_from`, `writes_to`):

| phase        | reads from    | writes (first one checks versions, the second mirrors) |
|--------------|---------------|--------------------------------------------------------|
| `steady`     | read_layout   | read_layout                                            |
| `dual_write` | read_layout   | read_layout, then target_layout                        |
| `backfill`   | read_layout   | read_layout, then target_layout                        |
| `verify`     | read_layout   | read_layout, then target_layout                        |
| `switched`   | target_layout | target_layout, then read_layout                        |

Nodes read the record; only the migrator (`keel.storage.layout_migration`) changes it. A write
reads it in its own transaction (on PostgreSQL with `FOR SHARE`, so a change of phase waits for
the writes in flight and every later write sees it); a read uses the node's copy, refreshed at
least every `LayoutView.refresh_after` seconds and never used once older than `max_age`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

RECORD_NAME = "profiles"  # the one row of storage_layout today


class Layout(StrEnum):
    NORMALIZED = "normalized"
    DOCUMENT = "document"


class Phase(StrEnum):
    STEADY = "steady"  # no migration under way: reads and writes go to read_layout alone
    DUAL_WRITE = "dual_write"  # every write goes to both layouts; the target is not complete
    BACKFILL = "backfill"  # as dual_write, while the migrator copies the older rows over
    VERIFY = "verify"  # as dual_write, while the migrator compares (and mends) every profile
    SWITCHED = "switched"  # reads go to the target; writes still go to both


MIGRATING = frozenset({Phase.DUAL_WRITE, Phase.BACKFILL, Phase.VERIFY, Phase.SWITCHED})


@dataclass(frozen=True, slots=True)
class LayoutRecord:
    read_layout: Layout
    phase: Phase
    target_layout: Layout | None
    generation: int = 0

    def reads_from(self) -> Layout:
        """The layout this record tells a node to read."""
        if self.phase is Phase.SWITCHED and self.target_layout is not None:
            return self.target_layout
        return self.read_layout

    def writes_to(self) -> tuple[Layout, Layout | None]:
        """The layout a write checks its expected version in, and the one it mirrors to (None
        outside a migration). The first is always the one reads go to."""
        if self.phase is Phase.STEADY or self.target_layout is None:
            return self.read_layout, None
        first = self.reads_from()
        return first, (self.read_layout if first is self.target_layout else self.target_layout)


class LayoutMismatch(RuntimeError):
    """The configured layout is not the one the database records: refused at start-up."""


def check_layout(recorded: LayoutRecord | None, configured: Layout, database: str) -> None:
    """Raise `LayoutMismatch` unless a node configured with `configured` may serve this
    database. `recorded` None: a database before the layouts' migration, which the schema
    check refuses anyway (with the better message: run `keel migrate`)."""
    if recorded is None:
        return
    if recorded.phase in MIGRATING and configured is recorded.target_layout:
        return  # a node of the layout being migrated to may join: it follows the record
    if recorded.read_layout is not configured:
        raise LayoutMismatch(
            f"The database {database} keeps its profiles in the {recorded.read_layout} layout, this Keel"
            f" is configured for {configured} (KEEL_STORAGE_LAYOUT). Configure {recorded.read_layout},"
            " or migrate the database to the other layout."
        )


def record_from_row(
    read_layout: str, phase: str, target_layout: str | None, generation: int = 0
) -> LayoutRecord:
    """The record; `LayoutMismatch` for a value this Keel does not know (a later Keel's phase
    of a migration between layouts, say): a node refuses it as it refuses another layout."""
    try:
        record = LayoutRecord(
            Layout(read_layout),
            Phase(phase),
            Layout(target_layout) if target_layout is not None else None,
            generation,
        )
    except ValueError:
        raise LayoutMismatch(
            f"The database records read layout {read_layout!r}, phase {phase!r}, target"
            f" {target_layout!r}, which this Keel does not know: a later Keel may be migrating it"
            " between layouts. Run that Keel, or finish the migration first."
        ) from None
    if (record.phase in MIGRATING) != (record.target_layout not in (None, record.read_layout)):
        raise LayoutMismatch(
            f"The database records read layout {read_layout!r}, phase {phase!r}, target"
            f" {target_layout!r}: a migration phase needs another layout as its target, and only"
            " one is allowed. Repair the record (`keel layout status`)."
        )
    return record


def missing_record() -> LayoutMismatch:
    """A database past the layouts' revision whose record row is gone: no node may guess."""
    return LayoutMismatch(
        f"The database has no layout record for {RECORD_NAME!r} (storage_layout is empty);"
        " restore it (`keel layout status` shows what a node expects) before serving."
    )
