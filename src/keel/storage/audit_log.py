"""The admin audit log (`admin_audit`), the same SQL on both databases through `SqlSession`."""

from __future__ import annotations

import json

from keel.domain.api_keys import AuditEntry
from keel.observability.database import DatabaseObserver
from keel.storage.personal_data import SqlSession
from keel.storage.rows import AUDIT_COLUMNS, audit_entry_from_row


class SqlAuditLog:
    def __init__(self, db: SqlSession, observer: DatabaseObserver) -> None:
        self._db = db
        self._observer = observer

    async def add(self, entry: AuditEntry) -> None:
        with self._observer.call("add_audit_entry"):
            await self._db.execute(
                "INSERT INTO admin_audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
                self._db.time(entry.at),
                entry.actor,
                entry.action,
                entry.subject,
                json.dumps(entry.detail, separators=(",", ":"), sort_keys=True),
            )

    async def entries(self, *, limit: int, before: int | None, subject: str | None) -> list[AuditEntry]:
        conditions: list[str] = []
        args: list[object] = []
        if before is not None:
            args.append(before)
            conditions.append(f"seq < ${len(args)}")
        if subject is not None:
            args.append(subject)
            conditions.append(f"subject = ${len(args)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit)
        with self._observer.call("list_audit_entries"):
            rows = await self._db.fetch(
                f"SELECT {AUDIT_COLUMNS} FROM admin_audit{where} ORDER BY seq DESC LIMIT ${len(args)}",  # noqa: S608 - constants and placeholders only
                *args,
            )
        return [audit_entry_from_row(tuple(row), self._db.parse_time) for row in rows]
