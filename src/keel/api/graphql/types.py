"""The GraphQL wire types. Field names become camelCase in the schema; the exported SDL
(`contracts/graphql/keel.graphql`) is the reviewed contract: evolve fields with `deprecation_reason`, never
remove them silently."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.scalars import JSON
from strawberry.types.scalar import ScalarDefinition

# An instant as REST writes it (RFC 3339, UTC, microseconds); declared to the schema in SCALARS.
DateTime = NewType("DateTime", str)
SCALARS: dict[object, ScalarDefinition] = {
    DateTime: strawberry.scalar(
        name="DateTime",
        description="An instant in RFC 3339 form, in UTC with microseconds: `2026-11-28T12:00:00.000000Z`.",
        serialize=str,
        parse_value=str,
    )
}


@strawberry.type(name="Email")
class EmailNode:
    address: str
    verified: bool
    primary: bool


@strawberry.type(name="Link")
class LinkNode:
    kind: str
    url: str


@strawberry.type(name="Profile", description="A user profile, cut to what the caller may see.")
class ProfileNode:
    id: strawberry.ID
    handle: str
    emails: list[EmailNode]
    primary_email: str = strawberry.field(description="The address of the email marked primary.")
    display_name: str | None
    bio: str | None
    avatar_url: str | None
    locale: str | None
    timezone: str | None
    links: list[LinkNode]
    attributes: JSON = strawberry.field(
        description="Custom attributes. Private ones are present for admin keys only."
    )
    version: int = strawberry.field(description="Grows by one with every change; pass it as expectedVersion.")
    created_at: DateTime
    updated_at: DateTime


@strawberry.type(name="ProfileEdge")
class ProfileEdgeNode:
    node: ProfileNode
    cursor: str | None = strawberry.field(
        description="Set on the last edge of a page that has a next page (the same as"
        " pageInfo.endCursor): the service pages by keyset from the end of a page only."
    )


@strawberry.type(name="PageInfo")
class PageInfoNode:
    has_next_page: bool
    has_previous_page: bool = strawberry.field(description="True when this page was asked `after` a cursor.")
    start_cursor: str | None = strawberry.field(description="Always null: pages only move forward.")
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page; null on the last page."
    )


@strawberry.type(name="ProfileConnection")
class ProfileConnectionNode:
    edges: list[ProfileEdgeNode]
    page_info: PageInfoNode
    total_count: int | None = strawberry.field(
        description="The number of profiles matching the filter when it is known exactly: on a first"
        " page that is also the last. Null otherwise: the service offers no count."
    )


@strawberry.type(name="Viewer", description="The API key this request is made with.")
class ViewerNode:
    key_id: strawberry.ID
    scopes: list[str]
    plan: str = strawberry.field(description="The rate-limit plan charged for this key's requests.")
    api_version: str
    is_admin: bool


@strawberry.type(name="CreateProfilePayload")
class CreateProfilePayload:
    profile: ProfileNode
    replayed: bool = strawberry.field(
        description="True when an earlier request with the same Idempotency-Key created the profile."
    )


@strawberry.type(name="DeleteProfilePayload")
class DeleteProfilePayload:
    id: strawberry.ID


@strawberry.input(name="EmailInput")
class EmailInput:
    address: str
    verified: bool = False
    primary: bool = False


@strawberry.input(name="LinkInput")
class LinkInput:
    kind: str
    url: str


@strawberry.input(name="CreateProfileInput")
class CreateProfileInput:
    handle: str
    emails: list[EmailInput]
    region: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="Where the profile lives (its id's prefix); this service's region when absent. "
        "Another region's is refused with MISDIRECTED, naming it.",
    )
    display_name: str | None = strawberry.UNSET
    bio: str | None = strawberry.UNSET
    avatar_url: str | None = strawberry.UNSET
    locale: str | None = strawberry.UNSET
    timezone: str | None = strawberry.UNSET
    links: list[LinkInput] | None = strawberry.UNSET
    attributes: JSON | None = strawberry.UNSET


@strawberry.input(
    name="ProfilePatch",
    description="A JSON merge patch (RFC 7396) as typed fields: an absent field is left as it is, null"
    " removes it, lists replace the whole list, and `attributes` is merged as a merge patch.",
)
class ProfilePatch:
    handle: str | None = strawberry.UNSET
    emails: list[EmailInput] | None = strawberry.UNSET
    display_name: str | None = strawberry.UNSET
    bio: str | None = strawberry.UNSET
    avatar_url: str | None = strawberry.UNSET
    locale: str | None = strawberry.UNSET
    timezone: str | None = strawberry.UNSET
    links: list[LinkInput] | None = strawberry.UNSET
    attributes: JSON | None = strawberry.UNSET


@strawberry.input(name="ProfileFilter", description="All given conditions must hold.")
class ProfileFilter:
    handle: str | None = None
    email: str | None = None
    ids: list[strawberry.ID] | None = strawberry.field(default=None, description="At most 100 ids.")
