"""What each API version changed, as Cadwyn `VersionChange`s: the newer shape is what the routes
write; each change turns an older version's request into it and the answer back, so a client
pinned to an older version sees exactly what it saw (the frozen exchanges in `contracts/rest/`
hold that promise). `GET /v1/versions` is generated from these classes.

A change that alters a query parameter's default lists it in `QUERY_DEFAULTS`: its request
migration and the older version's OpenAPI document both read that one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cadwyn import (
    RequestInfo,
    ResponseInfo,
    VersionBundle,
    VersionChange,
    convert_request_to_next_version_for,
    convert_response_to_previous_version_for,
    schema,
)

from keel.api.rest.schemas import ProfileList, ProfileOut

_PROFILES = "/v1/profiles"


@dataclass(frozen=True)
class QueryDefault:
    """A query parameter whose default the change altered: `before` is the older default."""

    path: str
    method: str
    name: str
    before: int


def _without_primary_email(document: dict[str, Any]) -> None:
    document.pop("primary_email", None)


class ProfilesCarryTheirPrimaryEmail(VersionChange):
    """Profiles carry `primary_email`, the address of the one email marked primary, so that a
    client need not search `emails` for it."""

    instructions_to_migrate_to_previous_version = (schema(ProfileOut).field("primary_email").didnt_exist,)

    @convert_response_to_previous_version_for(ProfileOut)
    def profile_without_primary_email(response: ResponseInfo) -> None:
        if isinstance(response.body, dict):  # a write-only key's receipt has no body
            PROFILE_DOWNGRADES[ProfilesCarryTheirPrimaryEmail](response.body)

    @convert_response_to_previous_version_for(_PROFILES, ["GET"])
    def listed_profiles_without_primary_email(response: ResponseInfo) -> None:
        for item in response.body["items"]:
            PROFILE_DOWNGRADES[ProfilesCarryTheirPrimaryEmail](item)


def cursor_of(link: str | None) -> str | None:
    """The `cursor` a next-page link carries (the routes write it), or None for no next page."""
    if link is None:
        return None
    return parse_qs(urlsplit(link).query).get("cursor", [None])[0]


class ProfileListCarriesItsLinks(VersionChange):
    """The profile list carries its own `links` (`next`: the next page's path and query, or
    null), in place of `next_cursor`: a client follows the link as it is, with the same filters
    and page size, instead of rebuilding the query around a cursor. The `Link` header stays."""

    instructions_to_migrate_to_previous_version = (
        schema(ProfileList).field("links").didnt_exist,
        schema(ProfileList).field("next_cursor").existed_as(type=str | None),
    )

    @convert_response_to_previous_version_for(_PROFILES, ["GET"])
    def next_cursor_instead_of_links(response: ResponseInfo) -> None:
        links = response.body.pop("links")
        response.body["next_cursor"] = cursor_of(links["next"])


_TWENTY_A_PAGE = QueryDefault(_PROFILES, "get", "limit", 20)


class ProfileListPagesHoldFifty(VersionChange):
    """A profile list without `limit` holds 50 profiles a page, up from 20."""

    instructions_to_migrate_to_previous_version = ()

    @convert_request_to_next_version_for(_TWENTY_A_PAGE.path, [_TWENTY_A_PAGE.method.upper()])
    def twenty_unless_asked(request: RequestInfo) -> None:
        request.query_params.setdefault(_TWENTY_A_PAGE.name, str(_TWENTY_A_PAGE.before))


# The query defaults each change altered, by change: read by its request migration (above) and by
# the older versions' OpenAPI documents (`older_query_defaults`).
QUERY_DEFAULTS: dict[type[VersionChange], tuple[QueryDefault, ...]] = {
    ProfileListPagesHoldFifty: (_TWENTY_A_PAGE,),
}


# How each change turns a profile document back into the older shape: the Cadwyn migrations
# above, and the newest version's hot path when it answers an older version's read
# (`keel.api.rest.hot_reads`), both apply these.
ProfileDowngrade = Callable[[dict[str, Any]], None]
PROFILE_DOWNGRADES: dict[type[VersionChange], ProfileDowngrade] = {
    ProfilesCarryTheirPrimaryEmail: _without_primary_email,
}


def profile_downgrades(bundle: VersionBundle, version: str) -> list[ProfileDowngrade]:
    """What turns a newest-version profile document into `version`'s, newest change first."""
    downgrades: list[ProfileDowngrade] = []
    for newer in bundle.versions:
        if str(newer.value) <= version:
            break
        downgrades.extend(PROFILE_DOWNGRADES[c] for c in newer.changes if c in PROFILE_DOWNGRADES)
    return downgrades
