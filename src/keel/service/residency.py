"""Where a profile lives: the region in its id. A service holds only its own region's profiles,
so a request for another region's id is refused (`Misdirected`, naming the home region), never
answered from this region's store (docs/residency.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeGuard

from keel.domain.errors import FieldError, Misdirected, ValidationFailed
from keel.domain.ids import REGION_PATTERN, is_profile_id, region_of
from keel.domain.profile import JSONValue

REGION_RULE = "a region: 2-10 of a-z and 0-9, starting with a letter"


def is_region(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and REGION_PATTERN.fullmatch(value) is not None


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


def create_here(document: JSONValue, region: str) -> JSONValue:
    """A create's document without its `region` (where the caller wants the profile to live:
    optional, this service's region when absent). A region that is not this service's is
    refused (`Misdirected`, naming it): the create must go there."""
    if not isinstance(document, dict) or "region" not in document:
        return document
    rest = dict(document)
    wanted = rest.pop("region")
    if wanted is None:
        return rest
    if not is_region(wanted):
        raise ValidationFailed([FieldError("/region", REGION_RULE)])
    if wanted != region:
        raise Misdirected(
            f"This service creates profiles in region {region}; send the create to region {wanted}.",
            wanted,
        )
    return rest
