"""Domain profiles → REST wire documents. The one place that knows both shapes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
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
_OWN_VIEW = ".own"
# The first API version's tags name no version: they were given out before there was another.
FIRST_API_VERSION = "2026-11-28"
_TAG = re.compile(r"([0-9]{1,18})\.([0-9a-f]{12})(\.full|\.own)?(?:\.([0-9]{4}-[0-9]{2}-[0-9]{2}))?")


def etag(profile: Profile, *, full_view: bool, api_version: str | None, own_view: bool = False) -> str:
    """Strong ETag from id and version, `"<version>.<hash of id>"`, so If-Match yields a
    version. A different representation has a different tag: admin callers see private
    attributes (`.full`), an end user their own view of their profile (`.own`), and each API
    version after the first has its own document shape (`.<API version>`), so a 304 never
    confirms another version's body."""
    shape = f".{api_version}" if api_version is not None and api_version != FIRST_API_VERSION else ""
    view = _FULL_VIEW if full_view else _OWN_VIEW if own_view else ""
    return f'"{profile.version}.{_id_tag(profile.id)}{view}{shape}"'


def version_from_etag(profile_id: str, value: str, named_versions: Collection[str]) -> int | None:
    """The version an If-Match names for this profile (from a tag of any view, and of the first
    API version or one of `named_versions`, the versions whose tags name them), or None if it
    names something else. The versions are given, not imported: this module stays light (the
    fuzz targets instrument everything it imports)."""
    value = value.strip()
    if not (value.startswith('"') and value.endswith('"')):
        return None
    # ASCII digits only (`str.isdigit` accepts "²", which `int` refuses), and no more than a
    # version can have: `int` refuses strings of over 4,300 digits.
    match = _TAG.fullmatch(value[1:-1])
    if match is None or match.group(2) != _id_tag(profile_id):
        return None
    if match.group(4) is not None and match.group(4) not in named_versions:
        return None
    return int(match.group(1))
