"""Domain profiles → REST wire documents. The one place that knows both shapes."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from keel.api.rest.api_versions import SUPPORTED_VERSIONS
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
# The first API version's tags name no version: they were given out before there was another.
_FIRST_API_VERSION = "2026-11-28"
_NAMED_VERSIONS = "|".join(re.escape(v) for v in sorted(SUPPORTED_VERSIONS) if v != _FIRST_API_VERSION)
_TAG = re.compile(rf"([0-9]{{1,18}})\.([0-9a-f]{{12}})(\.full)?(\.(?:{_NAMED_VERSIONS}))?")


def etag(profile: Profile, *, full_view: bool, api_version: str | None) -> str:
    """Strong ETag from id and version, `"<version>.<hash of id>"`, so If-Match yields a
    version. A different representation has a different tag: admin callers see private
    attributes (`.full`), and each API version after the first has its own document shape
    (`.<API version>`), so a 304 never confirms another version's body."""
    shape = f".{api_version}" if api_version is not None and api_version != _FIRST_API_VERSION else ""
    return f'"{profile.version}.{_id_tag(profile.id)}{_FULL_VIEW if full_view else ""}{shape}"'


def version_from_etag(profile_id: str, value: str) -> int | None:
    """The version an If-Match names for this profile (from a tag of any view or API version),
    or None if it names something else."""
    value = value.strip()
    if not (value.startswith('"') and value.endswith('"')):
        return None
    # ASCII digits only (`str.isdigit` accepts "²", which `int` refuses), and no more than a
    # version can have: `int` refuses strings of over 4,300 digits.
    match = _TAG.fullmatch(value[1:-1])
    if match is None or match.group(2) != _id_tag(profile_id):
        return None
    return int(match.group(1))
