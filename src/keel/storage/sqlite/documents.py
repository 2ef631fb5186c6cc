"""The document layout of profiles on SQLite: one JSON text document per profile
(keel.storage.documents), the live addresses in profile_document_emails, written in the same
transaction. Every filter is written to match an index (docs/layouts.md)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from keel.domain.errors import VersionMismatch
from keel.domain.profile import Profile
from keel.observability.database import DatabaseObserver
from keel.service.ports import ProfileQuery
from keel.storage.documents import DOCUMENT_COLUMNS, live_email_keys, profile_document, profile_from_document
from keel.storage.rows import uniqueness_conflict
from keel.storage.sqlite.connection import Connection
from keel.storage.sqlite.times import iso_or_none
from keel.storage.sqlite.times import parse_time as _time

_SELECT_DOCUMENT = f"SELECT {DOCUMENT_COLUMNS} FROM profile_documents p"  # noqa: S608 - constants only
_SELECT_LIVE_DOCUMENT = _SELECT_DOCUMENT + " WHERE p.id = ? AND p.deleted_at IS NULL"


class SqliteDocumentProfiles:
    def __init__(self, connection: Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def get(self, profile_id: str) -> Profile | None:
        with self._observer.call("get_profile"):
            async with self._db.execute(_SELECT_LIVE_DOCUMENT, (profile_id,)) as cursor:
                row = await cursor.fetchone()
        return profile_from_document(tuple(row), _time) if row else None

    async def find(self, query: ProfileQuery) -> list[Profile]:
        conditions = ["p.deleted_at IS NULL"]
        params: list[Any] = []
        if query.handle is not None:
            # The expression of ux_profile_documents_live_handle, written the same way.
            conditions.append("json_extract(p.document, '$.handle') = ?")
            params.append(query.handle)
        if query.email is not None:
            conditions.append(
                "p.id = (SELECT profile_id FROM profile_document_emails WHERE address_normalized = ?)"
            )
            params.append(query.email)
        if query.ids is not None:
            conditions.append(f"p.id IN ({','.join('?' * len(query.ids))})")
            params.extend(query.ids)
        if query.after_id is not None:
            conditions.append("p.id > ?")
            params.append(query.after_id)
        sql = f"{_SELECT_DOCUMENT} WHERE {' AND '.join(conditions)} ORDER BY p.id LIMIT ?"
        params.append(query.limit)
        with self._observer.call("find_profiles"):
            async with self._db.execute(sql, params) as cursor:
                rows = await cursor.fetchall()
        return [profile_from_document(tuple(row), _time) for row in rows]

    async def add(self, profile: Profile) -> None:
        with self._observer.call("add_profile"):
            await self._insert(profile)

    async def _insert(self, profile: Profile) -> None:
        try:
            await self._db.execute(
                "INSERT INTO profile_documents (id, document, version, deleted_at) VALUES (?, ?, ?, ?)",
                (profile.id, profile_document(profile), profile.version, iso_or_none(profile.deleted_at)),
            )
            await self._write_emails(profile)
        except sqlite3.IntegrityError as error:
            raise uniqueness_conflict(str(error)) from None

    async def scan(self, after_id: str | None, limit: int, *, through_id: str | None = None) -> list[Profile]:
        """Every stored profile, soft-deleted ones too, in id order after `after_id` (up to
        `through_id`): what a migration's tools and tests read of one layout."""
        with self._observer.call("scan_profiles"):
            async with self._db.execute(
                _SELECT_DOCUMENT + " WHERE p.id > ?1 AND (?2 IS NULL OR p.id <= ?2) ORDER BY p.id LIMIT ?3",
                (after_id or "", through_id, limit),
            ) as cursor:
                rows = await cursor.fetchall()
        return [profile_from_document(tuple(row), _time) for row in rows]

    async def ids_after(
        self, after_id: str | None, limit: int, *, through_id: str | None = None
    ) -> list[str]:
        """The ids stored after `after_id` (up to `through_id`), soft-deleted ones too, in order."""
        with self._observer.call("scan_profiles"):
            async with self._db.execute(
                "SELECT id FROM profile_documents WHERE id > ?1 AND (?2 IS NULL OR id <= ?2)"
                " ORDER BY id LIMIT ?3",
                (after_id or "", through_id, limit),
            ) as cursor:
                rows = await cursor.fetchall()
        return [str(row[0]) for row in rows]

    async def lock_ids(self, profile_ids: Sequence[str]) -> None:
        """Nothing to do on SQLite: a write transaction excludes every other writer already."""

    async def load_ids(self, profile_ids: Sequence[str]) -> list[Profile]:
        """These profiles as stored (soft-deleted ones too), in id order; missing ones left out."""
        found: list[Profile] = []
        with self._observer.call("scan_profiles"):
            for start in range(0, len(profile_ids), 500):  # SQLite's bound on parameters
                chunk = list(profile_ids[start : start + 500])
                async with self._db.execute(
                    _SELECT_DOCUMENT + f" WHERE p.id IN ({','.join('?' * len(chunk))}) ORDER BY p.id", chunk
                ) as cursor:
                    found += [profile_from_document(tuple(row), _time) for row in await cursor.fetchall()]
        return sorted(found, key=lambda profile: profile.id)

    async def put(self, profile: Profile, *, only_if_newer: bool = False) -> bool:
        """As `SqliteProfiles.put`."""
        with self._observer.call("mirror_profile"):
            if only_if_newer:
                async with self._db.execute(
                    "SELECT version FROM profile_documents WHERE id = ?", (profile.id,)
                ) as cursor:
                    stored = await cursor.fetchone()
                if stored is not None and stored[0] >= profile.version:
                    return False
            await self._db.execute("DELETE FROM profile_documents WHERE id = ?", (profile.id,))
            await self._insert(profile)
            return True

    async def remove(self, profile_ids: Sequence[str]) -> None:
        with self._observer.call("mirror_profile"):
            await self._db.executemany(
                "DELETE FROM profile_documents WHERE id = ?", [(i,) for i in profile_ids]
            )

    async def update(self, profile: Profile, expected_version: int) -> None:
        with self._observer.call("update_profile"):
            try:
                cursor = await self._db.execute(
                    "UPDATE profile_documents SET document = ?, version = ?, deleted_at = ?"
                    " WHERE id = ? AND version = ? AND deleted_at IS NULL",
                    (
                        profile_document(profile),
                        profile.version,
                        iso_or_none(profile.deleted_at),
                        profile.id,
                        expected_version,
                    ),
                )
                if cursor.rowcount != 1:
                    raise VersionMismatch("The profile changed meanwhile.", current_version=None)
                await self._db.execute(
                    "DELETE FROM profile_document_emails WHERE profile_id = ?", (profile.id,)
                )
                await self._write_emails(profile)
            except sqlite3.IntegrityError as error:
                raise uniqueness_conflict(str(error)) from None

    async def _write_emails(self, profile: Profile) -> None:
        await self._db.executemany(
            "INSERT INTO profile_document_emails (address_normalized, profile_id) VALUES (?, ?)",
            [(address, profile.id) for address in live_email_keys(profile)],
        )
