"""Row ↔ aggregate mapping shared by the SQL adapters.

Both adapters read a profile with ONE statement that returns the profile row plus its emails and
links aggregated as JSON arrays, so a read is one round trip and sees one consistent snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from keel.domain.api_keys import ApiKey, AuditEntry, Scope
from keel.domain.errors import Conflict
from keel.domain.events import DomainEvent
from keel.domain.profile import Email, Link, Profile, ProfileFields
from keel.service.ports import IdempotencyRecord, IdempotencyState, OutboxRecord

# The column order of every profile SELECT in both adapters.
PROFILE_COLUMNS = (
    "id, handle, display_name, bio, avatar_url, locale, timezone, attributes, "
    "version, created_at, updated_at, deleted_at"
)


def profile_values(profile: Profile, encode_time: Callable[[datetime], Any]) -> tuple[Any, ...]:
    """The profile row's values in `PROFILE_COLUMNS` order, times encoded for the driver."""
    f = profile.fields
    return (
        profile.id,
        f.handle,
        f.display_name,
        f.bio,
        f.avatar_url,
        f.locale,
        f.timezone,
        json.dumps(f.attributes),
        profile.version,
        encode_time(profile.created_at),
        encode_time(profile.updated_at),
        encode_time(profile.deleted_at) if profile.deleted_at is not None else None,
    )


def profile_from_row(row: Sequence[Any], parse_time: Callable[[Any], datetime]) -> Profile:
    (
        profile_id,
        handle,
        display_name,
        bio,
        avatar_url,
        locale,
        timezone,
        attributes,
        version,
        created_at,
        updated_at,
        deleted_at,
        emails,
        links,
    ) = row
    return Profile(
        id=profile_id,
        fields=ProfileFields(
            handle=handle,
            emails=tuple(Email(a, bool(v), bool(p)) for a, v, p in json.loads(emails)),
            display_name=display_name,
            bio=bio,
            avatar_url=avatar_url,
            locale=locale,
            timezone=timezone,
            links=tuple(Link(k, u) for k, u in json.loads(links)),
            attributes=json.loads(attributes) if isinstance(attributes, str) else attributes,
        ),
        version=version,
        created_at=parse_time(created_at),
        updated_at=parse_time(updated_at),
        deleted_at=parse_time(deleted_at) if deleted_at is not None else None,
    )


def uniqueness_conflict(constraint_text: str) -> Conflict:
    """The domain error for a unique-index violation, from the text naming the index: the
    handle's index mentions `handle`, the emails' index does not."""
    if "handle" in constraint_text:
        return Conflict("This handle is already used by another profile.", field="/handle")
    return Conflict("This email address is already used by another profile.", field="/emails")


API_KEY_COLUMNS = (
    "id, secret_hash, scopes, api_version, name, created_at, revoked_at, plan,"
    " expires_at, previous_secret_hash, previous_expires_at"
)


def api_key_from_row(row: Sequence[Any], parse_time: Callable[[Any], datetime]) -> ApiKey:
    return ApiKey(
        id=row[0],
        secret_hash=row[1],
        scopes=frozenset(Scope(s) for s in row[2].split()),
        api_version=row[3],
        name=row[4],
        created_at=parse_time(row[5]),
        revoked_at=parse_time(row[6]) if row[6] is not None else None,
        plan=row[7],
        expires_at=parse_time(row[8]) if row[8] is not None else None,
        previous_secret_hash=row[9],
        previous_expires_at=parse_time(row[10]) if row[10] is not None else None,
    )


AUDIT_COLUMNS = "seq, at, actor, action, subject, detail"


def audit_entry_from_row(row: Sequence[Any], parse_time: Callable[[Any], datetime]) -> AuditEntry:
    return AuditEntry(
        seq=int(row[0]),
        at=parse_time(row[1]),
        actor=row[2],
        action=row[3],
        subject=row[4],
        detail=json.loads(row[5]),
    )


IDEMPOTENCY_COLUMNS = "scope, key, fingerprint, state, outcome, locked_until, expires_at"


def idempotency_record_from_row(
    row: Sequence[Any], parse_time: Callable[[Any], datetime]
) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=row[0],
        key=row[1],
        fingerprint=row[2],
        state=IdempotencyState(row[3]),
        outcome=row[4],
        locked_until=parse_time(row[5]),
        expires_at=parse_time(row[6]),
    )


OUTBOX_COLUMNS = "seq, id, type, source, subject, time, data, published_at, traceparent"
RELAY_LEASE = "outbox-relay"  # the one row of event_relay_lease


def outbox_record_from_row(row: Sequence[Any], parse_time: Callable[[Any], datetime]) -> OutboxRecord:
    seq, event_id, event_type, source, subject, time, data, published_at, traceparent = row
    return OutboxRecord(
        seq=seq,
        event=DomainEvent(
            id=event_id, type=event_type, subject=subject, time=parse_time(time), data=json.loads(data)
        ),
        source=source,
        published_at=parse_time(published_at) if published_at is not None else None,
        traceparent=traceparent,
    )
