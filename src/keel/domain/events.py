"""Domain events: what happened to an aggregate, recorded in the same transaction as the change.

The service records one event per change it makes and the unit of work's outbox stores it beside
the change, so an event exists if and only if its change was committed. Each event names what it
is about (`subject`: a profile id or a key id) and carries the data consumers need as plain JSON;
the CloudEvents envelope around it is built when the event is published (`keel.service.outbox`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from keel.domain.api_keys import ApiKey, AuditEntry
from keel.domain.profile import JSONObject, JSONValue, Profile

PROFILE_CREATED = "keel.profile.created.v1"
PROFILE_UPDATED = "keel.profile.updated.v1"
PROFILE_DELETED = "keel.profile.deleted.v1"
API_KEY_CREATED = "keel.api_key.created.v1"
API_KEY_REVOKED = "keel.api_key.revoked.v1"
PROFILE_ERASED = "keel.profile.erased.v1"
ADMIN_ACTION = "keel.admin.action.v1"  # every entry of the admin audit log, as it is recorded
EVENT_TYPES = (
    PROFILE_CREATED,
    PROFILE_UPDATED,
    PROFILE_DELETED,
    API_KEY_CREATED,
    API_KEY_REVOKED,
    PROFILE_ERASED,
    ADMIN_ACTION,
)


@dataclass(frozen=True, slots=True)
class DomainEvent:
    id: str  # unique; consumers deduplicate by it, JetStream by it as Nats-Msg-Id
    type: str  # one of EVENT_TYPES
    subject: str  # the profile id (profile events) or the key id (key events)
    time: datetime  # when the change was made (UTC)
    data: JSONObject


def _event(event_type: str, subject: str, time: datetime, data: JSONObject) -> DomainEvent:
    return DomainEvent(id=str(uuid.uuid4()), type=event_type, subject=subject, time=time, data=data)


def _time(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def profile_data(profile: Profile) -> JSONObject:
    """The profile as consumers see it, private attributes included (consumers are the operator's
    own systems); `version` orders the events of one profile."""
    f = profile.fields
    return {
        "id": profile.id,
        "version": profile.version,
        "handle": f.handle,
        "emails": [{"address": e.address, "verified": e.verified, "primary": e.primary} for e in f.emails],
        "display_name": f.display_name,
        "bio": f.bio,
        "avatar_url": f.avatar_url,
        "locale": f.locale,
        "timezone": f.timezone,
        "links": [{"kind": link.kind, "url": link.url} for link in f.links],
        "attributes": f.attributes,
        "created_at": _time(profile.created_at),
        "updated_at": _time(profile.updated_at),
    }


def profile_changed(profile: Profile) -> DomainEvent:
    """The event of a profile just written at `profile.version`: created, updated or deleted."""
    if profile.deleted_at is not None:
        deleted_at = _time(profile.deleted_at)
        data: JSONObject = {"id": profile.id, "version": profile.version, "deleted_at": deleted_at}
        return _event(PROFILE_DELETED, profile.id, profile.deleted_at, data)
    event_type = PROFILE_CREATED if profile.version == 1 else PROFILE_UPDATED
    return _event(event_type, profile.id, profile.updated_at, profile_data(profile))


def api_key_created(key: ApiKey) -> DomainEvent:
    scopes: list[JSONValue] = [scope.value for scope in sorted(key.scopes)]
    data: JSONObject = {
        "key_id": key.id,
        "name": key.name,
        "scopes": scopes,
        "api_version": key.api_version,
        "plan": key.plan,
        "created_at": _time(key.created_at),
    }
    return _event(API_KEY_CREATED, key.id, key.created_at, data)


def api_key_revoked(key_id: str, at: datetime) -> DomainEvent:
    return _event(API_KEY_REVOKED, key_id, at, {"key_id": key_id, "revoked_at": _time(at)})


def admin_action(entry: AuditEntry) -> DomainEvent:
    """An admin's action as the audit log records it: who (`actor`, a key id), what (`action` on
    `subject`, a key or a profile id), when, and what changed (never a secret)."""
    data: JSONObject = {
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "at": _time(entry.at),
        # Stored as JSON by the audit log too: names, scopes, times as text.
        "detail": cast(JSONObject, json.loads(json.dumps(entry.detail))),
    }
    return _event(ADMIN_ACTION, entry.subject, entry.at, data)


def profile_erased(profile_id: str, version: int, erased_at: datetime, erasure_id: str) -> DomainEvent:
    """The profile's personal data is gone from Keel: consumers holding a copy must erase theirs.
    `version` follows the profile's last one, so a consumer that skips stale versions applies it."""
    data: JSONObject = {
        "id": profile_id,
        "version": version,
        "erased_at": _time(erased_at),
        "erasure_id": erasure_id,
    }
    return _event(PROFILE_ERASED, profile_id, erased_at, data)


def erased_payload(event_type: str, data: JSONObject, erased_at: datetime) -> JSONObject:
    """What a past event of an erased profile carries from now on: a created or updated event
    keeps its shape (so it still validates against its schema) with every personal value
    blanked, and says `erased_at`; an admin action on the profile loses which end user it
    named; the other types carry no personal data and stay as they were."""
    if event_type == ADMIN_ACTION:
        detail = data.get("detail")
        if isinstance(detail, dict) and "end_user" in detail:
            return {**data, "detail": {k: v for k, v in detail.items() if k != "end_user"}}
        return data
    if event_type not in (PROFILE_CREATED, PROFILE_UPDATED):
        return data
    return {
        "id": data.get("id"),
        "version": data.get("version"),
        "handle": "",
        "emails": [],
        "display_name": None,
        "bio": None,
        "avatar_url": None,
        "locale": None,
        "timezone": None,
        "links": [],
        "attributes": {},
        "created_at": data.get("created_at"),
        "updated_at": data.get("updated_at"),
        "erased_at": _time(erased_at),
    }
