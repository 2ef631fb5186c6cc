"""The layout record's SQL, written once for both databases (on `personal_data.SqlSession`).

`SqlLayoutRecords` reads and changes `storage_layout` (the record: see keel.storage.layouts),
`storage_layout_progress` (where a migration stands within its phase) and `storage_layout_nodes`
(each serving node's last reading of the record). Serving nodes read the record and acknowledge
what they read; only the migrator (keel.storage.layout_migration) changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.storage.layouts import RECORD_NAME, Layout, LayoutRecord, Phase, missing_record, record_from_row
from keel.storage.personal_data import SqlSession

_PROFILE_TABLE = {Layout.NORMALIZED: "profiles", Layout.DOCUMENT: "profile_documents"}


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the migrator stands within `phase`: the last id it copied or compared (None:
    not started), the last id the phase covers (the greatest id stored when it began: every
    profile created since was written to both layouts; "" when there was none), how many of
    `total` profiles it has done, how many it had to mend."""

    phase: Phase
    after_id: str | None
    through_id: str
    done: int
    total: int
    mended: int


@dataclass(frozen=True, slots=True)
class LayoutReading:
    """The record, and the migrator's progress row as it was read just after (None: no row)."""

    record: LayoutRecord
    progress: Progress | None


@dataclass(frozen=True, slots=True)
class NodeSeen:
    node_id: str
    generation: int
    seconds_ago: float  # by the database's clock


class RecordChanged(RuntimeError):
    """Another migrator changed the record meanwhile: this one stops rather than overrule it."""


class SqlLayoutRecords:
    def __init__(self, session: SqlSession) -> None:
        self._db = session

    @property
    def for_share(self) -> str:
        """The session's `FOR SHARE` (nothing on SQLite), for `read(lock=...)`."""
        return self._db.for_share

    async def read(self, *, lock: str = "") -> LayoutRecord:
        """The record; `lock` is the session's `for_share` or `for_update` (or nothing)."""
        rows = await self._db.fetch(
            "SELECT read_layout, phase, target_layout, generation FROM storage_layout"  # noqa: S608
            f" WHERE name = $1 {lock}",
            RECORD_NAME,
        )
        if not rows:
            raise missing_record()
        return record_from_row(*rows[0])

    async def reading(self) -> LayoutReading:
        """The record and the progress row, unlocked (for the gauges: keel.storage.layout_gauges)."""
        return LayoutReading(await self.read(), await self.progress())

    async def acknowledge(self, node_id: str, generation: int) -> None:
        await self._db.execute(
            "INSERT INTO storage_layout_nodes (node_id, generation, seen_at)"  # noqa: S608
            f" VALUES ($1, $2, {self._db.epoch_now}) ON CONFLICT (node_id) DO UPDATE"
            " SET generation = excluded.generation, seen_at = excluded.seen_at",
            node_id,
            generation,
        )

    async def change(self, expected: LayoutRecord, changed: LayoutRecord) -> LayoutRecord:
        """Write `changed` (its generation one past `expected`'s) if the record is still
        `expected`; `RecordChanged` otherwise."""
        generation = expected.generation + 1
        count = await self._db.execute(
            "UPDATE storage_layout SET read_layout = $2, phase = $3, target_layout = $4, generation = $5"
            " WHERE name = $1 AND generation = $6",
            RECORD_NAME,
            changed.read_layout.value,
            changed.phase.value,
            changed.target_layout.value if changed.target_layout is not None else None,
            generation,
            expected.generation,
        )
        if count != 1:
            raise RecordChanged("The layout record changed meanwhile (another `keel layout` command?).")
        return LayoutRecord(changed.read_layout, changed.phase, changed.target_layout, generation)

    async def progress(self) -> Progress | None:
        rows = await self._db.fetch(
            "SELECT phase, after_id, through_id, done, total, mended FROM storage_layout_progress"
            " WHERE name = $1",
            RECORD_NAME,
        )
        if not rows:
            return None
        phase, after_id, through_id, done, total, mended = rows[0]
        return Progress(Phase(phase), after_id, through_id, done, total, mended)

    async def set_progress(self, progress: Progress | None) -> None:
        await self._db.execute("DELETE FROM storage_layout_progress WHERE name = $1", RECORD_NAME)
        if progress is not None:
            await self._db.execute(
                "INSERT INTO storage_layout_progress (name, phase, after_id, through_id, done, total, mended)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                RECORD_NAME,
                progress.phase.value,
                progress.after_id,
                progress.through_id,
                progress.done,
                progress.total,
                progress.mended,
            )

    async def nodes(self) -> list[NodeSeen]:
        rows = await self._db.fetch(
            f"SELECT node_id, generation, {self._db.epoch_now} - seen_at FROM storage_layout_nodes"  # noqa: S608
            " ORDER BY node_id"
        )
        return [NodeSeen(str(n), int(g), float(ago)) for n, g, ago in rows]

    async def forget_node(self, node_id: str) -> None:
        await self._db.execute("DELETE FROM storage_layout_nodes WHERE node_id = $1", node_id)

    async def counts(self) -> dict[Layout, int]:
        """How many profiles (soft-deleted ones too) each layout holds, in one statement: one
        snapshot, so two layouts written in the same transactions count the same."""
        rows = await self._db.fetch(
            "SELECT (SELECT count(*) FROM profiles), (SELECT count(*) FROM profile_documents)"
        )
        normalized, document = rows[0]
        return {Layout.NORMALIZED: int(normalized), Layout.DOCUMENT: int(document)}

    async def clear_some(self, layout: Layout, limit: int) -> int:
        """Delete up to `limit` profiles of `layout` (their emails and links with them: the
        foreign keys cascade); how many. Never the layout reads go to: the caller's check."""
        table = _PROFILE_TABLE[layout]
        return await self._db.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT $1)",  # noqa: S608
            limit,
        )

    async def last_id(self, layout: Layout) -> str | None:
        rows = await self._db.fetch(f"SELECT max(id) FROM {_PROFILE_TABLE[layout]}")  # noqa: S608
        return str(rows[0][0]) if rows and rows[0][0] is not None else None
