"""What `keel residency audit` looks for in a region's database: any stored profile id, or
event or delivery about a profile, whose region (the id's prefix) is not the database's. A region's
database holds only its own profiles (docs/residency.md); expected: nothing found.

The same SQL on both databases, through `SqlSession`: every column that holds a profile id, in
both storage layouts, the outbox's events and the webhook deliveries' (by subject: a key's events
have key ids as subjects, which have no `_`), the erasures and the tombstones; and the
idempotency records, whose stored outcome is a whole profile (its id read from the outcome).
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.domain.ids import is_profile_id, region_of
from keel.observability.database import DatabaseObserver
from keel.storage.personal_data import SqlSession, outcome_profile_id

# (table, column holding a profile id, or a subject that may be one)
PROFILE_ID_COLUMNS = (
    ("profiles", "id"),
    ("profile_emails", "profile_id"),
    ("profile_links", "profile_id"),
    ("profile_documents", "id"),
    ("profile_document_emails", "profile_id"),
    ("event_outbox", "subject"),
    ("webhook_deliveries", "subject"),
    ("profile_erasures", "profile_id"),
    ("profile_tombstones", "profile_id"),
    ("profile_subjects", "profile_id"),
)
SAMPLE = 5


@dataclass(frozen=True, slots=True)
class ForeignRows:
    """Rows of `table` about profiles of other regions: how many, and some of their ids with
    their regions (an id names no one's personal data by itself)."""

    table: str
    column: str
    count: int
    sample: tuple[tuple[str, str], ...]


class SqlResidencyAudit:
    def __init__(self, db: SqlSession, observer: DatabaseObserver) -> None:
        self._db = db
        self._observer = observer

    async def foreign_rows(self, region: str) -> list[ForeignRows]:
        """Every table that holds rows about other regions' profiles; empty when none does."""
        found = []
        # `!` escapes LIKE's `_` (any character) so that it means the separator itself.
        any_region, this_region = "%!_%", f"{region}!_%"
        for table, column in PROFILE_ID_COLUMNS:
            where = f"{column} LIKE $1 ESCAPE '!' AND {column} NOT LIKE $2 ESCAPE '!'"
            with self._observer.call("residency_audit"):
                counted = await self._db.fetch(
                    f"SELECT count(*) FROM {table} WHERE {where}",  # noqa: S608 - constants only
                    any_region,
                    this_region,
                )
                rows = await self._db.fetch(
                    f"SELECT DISTINCT {column} FROM {table} WHERE {where} ORDER BY {column} LIMIT {SAMPLE}",  # noqa: S608
                    any_region,
                    this_region,
                )
            count = int(counted[0][0])
            if count:
                sample = tuple(
                    (value, region_of(value) if is_profile_id(value) else "?")
                    for value in (str(r[0]) for r in rows)
                )
                found.append(ForeignRows(table, column, count, sample))
        records = await self._foreign_outcomes(region)
        if records:
            found.append(ForeignRows("idempotency_keys", "outcome", len(records), tuple(records[:SAMPLE])))
        return found

    async def _foreign_outcomes(self, region: str) -> list[tuple[str, str]]:
        """Stored outcomes (kept for a day) that are profiles of other regions."""
        with self._observer.call("residency_audit"):
            rows = await self._db.fetch("SELECT outcome FROM idempotency_keys WHERE outcome IS NOT NULL")
        foreign = []
        for row in rows:
            profile_id = outcome_profile_id(str(row[0]))
            if profile_id is not None and is_profile_id(profile_id) and region_of(profile_id) != region:
                foreign.append((profile_id, region_of(profile_id)))
        return sorted(foreign)
