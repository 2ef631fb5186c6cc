"""Where a profile lives: the region in its id. A service holds only its own region's profiles,
so a request for another region's id is refused (`Misdirected`, naming the home region), never
answered from this region's store (docs/residency.md)."""

from __future__ import annotations

from collections.abc import Iterable

from keel.domain.errors import Misdirected
from keel.domain.ids import is_profile_id, region_of


def ensure_here(profile_ids: Iterable[str], region: str) -> None:
    """Refuse if any well-formed id in `profile_ids` belongs to another region than `region`
    (a malformed id is left to the caller: it names no profile anywhere)."""
    for profile_id in profile_ids:
        if is_profile_id(profile_id):
            home = region_of(profile_id)
            if home != region:
                raise Misdirected(
                    f"This profile lives in region {home}; this service holds region {region}'s."
                    " Send the request to that region.",
                    home,
                )
