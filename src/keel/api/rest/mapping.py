"""Domain profiles → REST wire documents. The one place that knows both shapes."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from keel.api.timestamps import timestamp
from keel.domain.profile import Profile


def profile_document(profile: Profile) -> dict[str, Any]:
    f = profile.fields
    return {
        "id": profile.id,
        "handle": f.handle,
        "emails": [{"address": e.address, "verified": e.verified, "primary": e.primary} for e in f.emails],
        "primary_email": f.primary_email,
        "display_name": f.display_name,
        "bio": f.bio,
        "avatar_url": f.avatar_url,
        "locale": f.locale,
        "timezone": f.timezone,
        "links": [{"kind": link.kind, "url": link.url} for link in f.links],
        "attributes": f.attributes,
        "version": profile.version,
        "created_at": timestamp(profile.created_at),
        "updated_at": timestamp(profile.updated_at),
    }


def _id_tag(profile_id: str) -> str:
    return hashlib.sha256(profile_id.encode()).hexdigest()[:12]


_FULL_VIEW = ".full"
_VERSION = re.compile(r"[0-9]{1,18}")


def etag(profile: Profile, *, full_view: bool) -> str:
    """Strong ETag from id and version, `"<version>.<hash of id>"`, so If-Match yields a
    version. Admin callers see private attributes, a different representation: `.full`."""
    return f'"{profile.version}.{_id_tag(profile.id)}{_FULL_VIEW if full_view else ""}"'


def version_from_etag(profile_id: str, value: str) -> int | None:
    """The version an If-Match names for this profile, or None if it names something else."""
    value = value.strip()
    if not (value.startswith('"') and value.endswith('"')):
        return None
    version, _, tag = value[1:-1].removesuffix(_FULL_VIEW).partition(".")
    # ASCII digits only (`str.isdigit` accepts "²", which `int` refuses), and no more than a
    # version can have: `int` refuses strings of over 4,300 digits.
    if tag != _id_tag(profile_id) or not _VERSION.fullmatch(version):
        return None
    return int(version)
