"""An admin's action, recorded once: in the audit log (read by admins, `/v1/audit`) and as a
`keel.admin.action.v1` event (for the operator's systems), in the caller's transaction, so that
one exists if and only if the other does."""

from __future__ import annotations

from keel.domain.api_keys import AuditEntry
from keel.domain.events import admin_action
from keel.service.ports import UnitOfWork


async def record_admin_action(uow: UnitOfWork, entry: AuditEntry, event_source: str) -> None:
    await uow.audit.add(entry)
    await uow.outbox.add(admin_action(entry), event_source)
