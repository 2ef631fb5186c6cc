"""The API's versions, newest first. A new version is a `VersionChange` that says how to turn
requests of the older version into the newer shape and responses back (see docs/api/rest.md)."""

from __future__ import annotations

from cadwyn import Version, VersionBundle

from keel.api.rest.version_changes import (
    ProfileListCarriesItsLinks,
    ProfileListPagesHoldFifty,
    ProfilesCarryTheirPrimaryEmail,
)

VERSION_HEADER = "Keel-Version"

versions = VersionBundle(
    Version(
        "2026-12-07",
        ProfilesCarryTheirPrimaryEmail,
        ProfileListCarriesItsLinks,
        ProfileListPagesHoldFifty,
    ),
    Version("2026-11-28"),
)

NEWEST_VERSION: str = str(versions.version_values[0])
SUPPORTED_VERSIONS: frozenset[str] = frozenset(str(v) for v in versions.version_values)
