"""The document layout of profiles on PostgreSQL: one jsonb document per profile
(keel.storage.documents), the live addresses in profile_document_emails, written in the same
transaction. Every filter is written to match an index (docs/layouts.md shows the plans)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from keel.domain.errors import VersionMismatch
from keel.domain.profile import Profile
from keel.observability.database import DatabaseObserver
from keel.service.ports import ProfileQuery
from keel.storage.documents import live_email_keys, profile_document, profile_from_document
from keel.storage.rows import uniqueness_conflict

_Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# DOCUMENT_COLUMNS, the document as its JSON text (decoded by the shared mapping, as on SQLite).
_SELECT_DOCUMENT = "SELECT id, document::text, version, deleted_at FROM profile_documents p"
_SELECT_LIVE_DOCUMENT = _SELECT_DOCUMENT + " WHERE p.id = $1 AND p.deleted_at IS NULL"


def _time(value: Any) -> datetime:
    assert isinstance(value, datetime)  # asyncpg decodes timestamptz itself
    return value


class PostgresDocumentProfiles:
    def __init__(self, connection: _Connection, observer: DatabaseObserver) -> None:
        self._db = connection
        self._observer = observer

    async def get(self, profile_id: str) -> Profile | None:
        with self._observer.call("get_profile"):
            row = await self._db.fetchrow(_SELECT_LIVE_DOCUMENT, profile_id)
        return profile_from_document(tuple(row), _time) if row is not None else None

    async def find(self, query: ProfileQuery) -> list[Profile]:
        conditions = ["p.deleted_at IS NULL"]
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if query.handle is not None:
            # The expression of ux_profile_documents_live_handle, written the same way.
            conditions.append(f"(p.document->>'handle') = {param(query.handle)}")
        if query.email is not None:
            conditions.append(
                "p.id = (SELECT profile_id FROM profile_document_emails"  # noqa: S608 - placeholders only
                f" WHERE address_normalized = {param(query.email)})"
            )
        if query.ids is not None:
            conditions.append(f"p.id = ANY({param(list(query.ids))}::text[])")
        if query.after_id is not None:
            conditions.append(f"p.id > {param(query.after_id)}")
        sql = f"{_SELECT_DOCUMENT} WHERE {' AND '.join(conditions)} ORDER BY p.id LIMIT {param(query.limit)}"
        with self._observer.call("find_profiles"):
            rows = await self._db.fetch(sql, *params)
        return [profile_from_document(tuple(row), _time) for row in rows]

    async def add(self, profile: Profile) -> None:
        with self._observer.call("add_profile"):
            await self._insert(profile)

    async def _insert(self, profile: Profile) -> None:
        try:
            await self._db.execute(
                "INSERT INTO profile_documents (id, document, version, deleted_at)"
                " VALUES ($1, $2::jsonb, $3, $4)",
                profile.id,
                profile_document(profile),
                profile.version,
                profile.deleted_at,
            )
            await self._write_emails(profile)
        except asyncpg.UniqueViolationError as error:
            raise uniqueness_conflict(error.constraint_name or "") from None

    async def scan(self, after_id: str | None, limit: int, *, through_id: str | None = None) -> list[Profile]:
        """Every stored profile, soft-deleted ones too, in id order after `after_id` (up to
        `through_id`): what a migration's tools and tests read of one layout."""
        sql = (
            f"{_SELECT_DOCUMENT} WHERE p.id > $1 AND ($2::text IS NULL OR p.id <= $2) ORDER BY p.id LIMIT $3"
        )
        with self._observer.call("scan_profiles"):
            rows = await self._db.fetch(sql, after_id or "", through_id, limit)
        return [profile_from_document(tuple(row), _time) for row in rows]

    async def ids_after(
        self, after_id: str | None, limit: int, *, through_id: str | None = None
    ) -> list[str]:
        """The ids stored after `after_id` (up to `through_id`), soft-deleted ones too, in order."""
        with self._observer.call("scan_profiles"):
            rows = await self._db.fetch(
                "SELECT id FROM profile_documents WHERE id > $1 AND ($2::text IS NULL OR id <= $2)"
                " ORDER BY id LIMIT $3",
                after_id or "",
                through_id,
                limit,
            )
        return [str(row[0]) for row in rows]

    async def lock_ids(self, profile_ids: Sequence[str]) -> None:
        """Share-lock these rows (those there) until the transaction ends, in id order: no
        write or erasure of them commits meanwhile. Read them after this, in a statement of
        its own: a statement that waited for a lock sees the locked row's new version but its
        children as of its start."""
        with self._observer.call("scan_profiles"):
            await self._db.fetch(
                "SELECT id FROM profile_documents WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE",
                list(profile_ids),
            )

    async def load_ids(self, profile_ids: Sequence[str]) -> list[Profile]:
        """These profiles as stored (soft-deleted ones too), in id order; missing ones left out."""
        with self._observer.call("scan_profiles"):
            rows = await self._db.fetch(
                _SELECT_DOCUMENT + " WHERE p.id = ANY($1::text[]) ORDER BY p.id", list(profile_ids)
            )
        return [profile_from_document(tuple(row), _time) for row in rows]

    async def put(self, profile: Profile, *, only_if_newer: bool = False) -> bool:
        """As `PostgresProfiles.put`."""
        with self._observer.call("mirror_profile"):
            if only_if_newer:
                stored = await self._db.fetchval(
                    "SELECT version FROM profile_documents WHERE id = $1 FOR UPDATE", profile.id
                )
                if stored is not None and stored >= profile.version:
                    return False
            await self._db.execute("DELETE FROM profile_documents WHERE id = $1", profile.id)
            await self._insert(profile)
            return True

    async def remove(self, profile_ids: Sequence[str]) -> None:
        with self._observer.call("mirror_profile"):
            await self._db.execute(
                "DELETE FROM profile_documents WHERE id = ANY($1::text[])", list(profile_ids)
            )

    async def update(self, profile: Profile, expected_version: int) -> None:
        with self._observer.call("update_profile"):
            try:
                status = await self._db.execute(
                    "UPDATE profile_documents SET document = $2::jsonb, version = $3, deleted_at = $4"
                    " WHERE id = $1 AND version = $5 AND deleted_at IS NULL",
                    profile.id,
                    profile_document(profile),
                    profile.version,
                    profile.deleted_at,
                    expected_version,
                )
                if status != "UPDATE 1":
                    raise VersionMismatch("The profile changed meanwhile.", current_version=None)
                await self._db.execute(
                    "DELETE FROM profile_document_emails WHERE profile_id = $1", profile.id
                )
                await self._write_emails(profile)
            except asyncpg.UniqueViolationError as error:
                raise uniqueness_conflict(error.constraint_name or "") from None

    async def _write_emails(self, profile: Profile) -> None:
        addresses = live_email_keys(profile)
        if addresses:
            await self._db.executemany(
                "INSERT INTO profile_document_emails (address_normalized, profile_id) VALUES ($1, $2)",
                [(address, profile.id) for address in addresses],
            )
