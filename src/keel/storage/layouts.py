"""Which layout holds the profiles, as the database records it (the `storage_layout` table).

Two layouts keep the same aggregate: `normalized` (profiles, profile_emails, profile_links) and
`document` (profile_documents, one row per profile, plus profile_document_emails for the
uniqueness of addresses). A node is configured with a layout (KEEL_STORAGE_LAYOUT) and the
database records which one is read; a node whose configuration disagrees refuses to start
rather than read tables that are not kept up to date.

The record is one row per aggregate (`name`, only `profiles` today): `read_layout`, the layout
reads go to; `phase`, where a migration between layouts stands; `target_layout`, the layout a
migration is moving to (NULL when none is under way). Only the `steady` phase exists yet: every
write goes to `read_layout` alone. A migration adds phases (dual-write, backfill, verify, switch,
finish) that name what each node must write and read given `read_layout` and `target_layout`,
without another column: the nodes read the phase, they do not each decide it.
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


@dataclass(frozen=True, slots=True)
class LayoutRecord:
    read_layout: Layout
    phase: Phase
    target_layout: Layout | None


class LayoutMismatch(RuntimeError):
    """The configured layout is not the one the database records: refused at start-up."""


def check_layout(recorded: LayoutRecord | None, configured: Layout, database: str) -> None:
    """Raise `LayoutMismatch` unless a node configured with `configured` may serve this
    database. `recorded` None: a database before the layouts' migration, which the schema
    check refuses anyway (with the better message: run `keel migrate`)."""
    if recorded is None:
        return
    if recorded.phase is not Phase.STEADY:
        raise LayoutMismatch(
            f"The database {database} is in layout phase {recorded.phase}, which this Keel does not know."
        )
    if recorded.read_layout is not configured:
        raise LayoutMismatch(
            f"The database {database} keeps its profiles in the {recorded.read_layout} layout, this Keel"
            f" is configured for {configured} (KEEL_STORAGE_LAYOUT). Configure {recorded.read_layout},"
            " or migrate the database to the other layout."
        )


def record_from_row(read_layout: str, phase: str, target_layout: str | None) -> LayoutRecord:
    """The record; `LayoutMismatch` for a value this Keel does not know (a later Keel's phase
    of a migration between layouts, say): a node refuses it as it refuses another layout."""
    try:
        return LayoutRecord(
            Layout(read_layout), Phase(phase), Layout(target_layout) if target_layout is not None else None
        )
    except ValueError:
        raise LayoutMismatch(
            f"The database records read layout {read_layout!r}, phase {phase!r}, target"
            f" {target_layout!r}, which this Keel does not know: a later Keel may be migrating it"
            " between layouts. Run that Keel, or finish the migration first."
        ) from None


def missing_record() -> LayoutMismatch:
    """A database past the layouts' revision whose record row is gone: no node may guess."""
    return LayoutMismatch(
        f"The database has no layout record for {RECORD_NAME!r} (storage_layout is empty);"
        " restore it (`keel layout status` shows what a node expects) before serving."
    )
