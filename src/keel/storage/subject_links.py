"""Which profile each end user owns (`profile_subjects`), the same SQL on both databases
through `SqlSession`."""

from __future__ import annotations

from datetime import datetime

from keel.domain.end_users import EndUser, LinkOutcome
from keel.observability.database import DatabaseObserver
from keel.storage.personal_data import SqlSession, lock_profile_rows


class SqlSubjectLinks:
    def __init__(self, db: SqlSession, observer: DatabaseObserver) -> None:
        self._db = db
        self._observer = observer

    async def profile_of(self, issuer: str, subject: str) -> str | None:
        with self._observer.call("get_subject_link"):
            rows = await self._db.fetch(
                "SELECT profile_id FROM profile_subjects WHERE issuer = $1 AND subject = $2", issuer, subject
            )
        return str(rows[0][0]) if rows else None

    async def subject_of(self, profile_id: str) -> tuple[EndUser, datetime] | None:
        with self._observer.call("get_subject_link"):
            rows = await self._db.fetch(
                "SELECT issuer, subject, linked_at FROM profile_subjects WHERE profile_id = $1", profile_id
            )
        if not rows:
            return None
        issuer, subject, linked_at = rows[0]
        return EndUser(str(issuer), str(subject)), self._db.parse_time(linked_at)

    async def link(self, profile_id: str, end_user: EndUser, at: datetime) -> LinkOutcome:
        with self._observer.call("link_subject"):
            # The profile's rows locked as an erasure locks them: an erasure that started first
            # has removed them (and its links) when this reads on, one that starts later waits,
            # then removes this link too; and links of one profile run one at a time.
            if not await lock_profile_rows(self._db, profile_id):
                return LinkOutcome.NO_PROFILE
            holder = await self.profile_of(end_user.issuer, end_user.subject)
            if holder is not None and holder != profile_id:
                return LinkOutcome.TAKEN
            await self._db.execute("DELETE FROM profile_subjects WHERE profile_id = $1", profile_id)
            # A concurrent link of the same end user to another profile commits first or finds
            # its key taken here: nothing is linked twice.
            inserted = await self._db.execute(
                "INSERT INTO profile_subjects (issuer, subject, profile_id, linked_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (issuer, subject) DO NOTHING",
                end_user.issuer,
                end_user.subject,
                profile_id,
                self._db.time(at),
            )
        return LinkOutcome.LINKED if inserted == 1 else LinkOutcome.TAKEN

    async def unlink(self, profile_id: str) -> bool:
        with self._observer.call("unlink_subject"):
            removed = await self._db.execute("DELETE FROM profile_subjects WHERE profile_id = $1", profile_id)
        return removed > 0
