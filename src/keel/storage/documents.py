"""Profile ↔ document mapping of the document layout, shared by the SQL adapters.

A profile is one row of `profile_documents`: its id, the aggregate's fields and times as one
JSON document, and the two values every statement filters on kept as columns of their own: the
version (optimistic concurrency) and deleted_at (soft delete, the partial indexes' predicate).
Times in the document are ISO 8601 text in UTC with microseconds, so they compare as text too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from keel.domain.profile import Email, Link, Profile, ProfileFields

# The column order of every document SELECT in both adapters.
DOCUMENT_COLUMNS = "id, document, version, deleted_at"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def profile_document(profile: Profile) -> str:
    """The JSON text of the document column."""
    f = profile.fields
    return json.dumps(
        {
            "handle": f.handle,
            "emails": [
                {"address": e.address, "verified": e.verified, "primary": e.primary} for e in f.emails
            ],
            "display_name": f.display_name,
            "bio": f.bio,
            "avatar_url": f.avatar_url,
            "locale": f.locale,
            "timezone": f.timezone,
            "links": [{"kind": link.kind, "url": link.url} for link in f.links],
            "attributes": f.attributes,
            "created_at": _iso(profile.created_at),
            "updated_at": _iso(profile.updated_at),
        },
        separators=(",", ":"),
    )


def profile_from_document(row: tuple[Any, ...], parse_time: Callable[[Any], datetime]) -> Profile:
    """A profile from a row in `DOCUMENT_COLUMNS` order; `parse_time` reads the deleted_at column."""
    profile_id, document, version, deleted_at = row
    d = json.loads(document)
    return Profile(
        id=profile_id,
        fields=ProfileFields(
            handle=d["handle"],
            emails=tuple(Email(e["address"], e["verified"], e["primary"]) for e in d["emails"]),
            display_name=d["display_name"],
            bio=d["bio"],
            avatar_url=d["avatar_url"],
            locale=d["locale"],
            timezone=d["timezone"],
            links=tuple(Link(link["kind"], link["url"]) for link in d["links"]),
            attributes=d["attributes"],
        ),
        version=version,
        created_at=datetime.fromisoformat(d["created_at"]),
        updated_at=datetime.fromisoformat(d["updated_at"]),
        deleted_at=parse_time(deleted_at) if deleted_at is not None else None,
    )


def live_email_keys(profile: Profile) -> list[str]:
    """The normalized addresses the profile holds in profile_document_emails: none once deleted.
    Sorted, so two writers taking the same addresses lock them in the same order (no deadlock)."""
    if profile.deleted_at is not None:
        return []
    return sorted(e.normalized for e in profile.fields.emails)
