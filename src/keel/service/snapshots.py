"""A profile as plain JSON-compatible data, and back: the outcome stored with an idempotency
key, replayed to a retried request whatever protocol it came in on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from keel.domain.profile import Email, JSONObject, Link, Profile, ProfileFields


def profile_snapshot(profile: Profile) -> JSONObject:
    fields = profile.fields
    return {
        "id": profile.id,
        "handle": fields.handle,
        "emails": [[e.address, e.verified, e.primary] for e in fields.emails],
        "display_name": fields.display_name,
        "bio": fields.bio,
        "avatar_url": fields.avatar_url,
        "locale": fields.locale,
        "timezone": fields.timezone,
        "links": [[link.kind, link.url] for link in fields.links],
        "attributes": fields.attributes,
        "version": profile.version,
        "created_at": profile.created_at.isoformat(),
        "updated_at": profile.updated_at.isoformat(),
        "deleted_at": profile.deleted_at.isoformat() if profile.deleted_at else None,
    }


def profile_from_snapshot(data: dict[str, Any]) -> Profile:
    deleted_at = data.get("deleted_at")
    return Profile(
        id=data["id"],
        fields=ProfileFields(
            handle=data["handle"],
            emails=tuple(Email(a, bool(v), bool(p)) for a, v, p in data["emails"]),
            display_name=data.get("display_name"),
            bio=data.get("bio"),
            avatar_url=data.get("avatar_url"),
            locale=data.get("locale"),
            timezone=data.get("timezone"),
            links=tuple(Link(k, u) for k, u in data["links"]),
            attributes=data.get("attributes") or {},
        ),
        version=data["version"],
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
        deleted_at=datetime.fromisoformat(deleted_at) if deleted_at else None,
    )
