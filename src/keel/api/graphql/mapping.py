"""Domain profiles → GraphQL wire types, GraphQL inputs → service documents. The one place that
knows both shapes (the document keys are the service's, as REST sends them)."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.scalars import JSON

from keel.api.timestamps import timestamp
from keel.domain.api_keys import Principal
from keel.domain.profile import JSONValue, Profile
from keel.service.use_cases import ProfilePage

from .types import (
    CreateProfileInput,
    DateTime,
    EmailInput,
    EmailNode,
    LinkInput,
    LinkNode,
    PageInfoNode,
    ProfileConnectionNode,
    ProfileEdgeNode,
    ProfileNode,
    ProfilePatch,
    ViewerNode,
)


def profile_node(profile: Profile) -> ProfileNode:
    f = profile.fields
    return ProfileNode(
        id=strawberry.ID(profile.id),
        handle=f.handle,
        emails=[EmailNode(address=e.address, verified=e.verified, primary=e.primary) for e in f.emails],
        primary_email=f.primary_email,
        display_name=f.display_name,
        bio=f.bio,
        avatar_url=f.avatar_url,
        locale=f.locale,
        timezone=f.timezone,
        links=[LinkNode(kind=link.kind, url=link.url) for link in f.links],
        attributes=JSON(f.attributes),
        version=profile.version,
        created_at=DateTime(timestamp(profile.created_at)),
        updated_at=DateTime(timestamp(profile.updated_at)),
    )


def connection_node(page: ProfilePage, *, after: str | None) -> ProfileConnectionNode:
    nodes = [profile_node(p) for p in page.profiles]
    edges = [ProfileEdgeNode(node=node, cursor=None) for node in nodes]
    if edges and page.next_cursor is not None:
        edges[-1].cursor = page.next_cursor
    return ProfileConnectionNode(
        edges=edges,
        page_info=PageInfoNode(
            has_next_page=page.next_cursor is not None,
            has_previous_page=after is not None,
            start_cursor=None,
            end_cursor=page.next_cursor,
        ),
        # Exact only on the last page of a query started from the beginning.
        total_count=len(nodes) if page.next_cursor is None and after is None else None,
    )


def viewer_node(principal: Principal) -> ViewerNode:
    return ViewerNode(
        key_id=strawberry.ID(principal.key_id),
        scopes=sorted(scope.value for scope in principal.scopes),
        plan=principal.plan,
        api_version=principal.api_version,
        is_admin=principal.is_admin,
    )


def _emails(emails: list[EmailInput]) -> list[JSONValue]:
    return [{"address": e.address, "verified": e.verified, "primary": e.primary} for e in emails]


def _links(links: list[LinkInput] | None) -> JSONValue:
    return None if links is None else [{"kind": link.kind, "url": link.url} for link in links]


def _document(values: dict[str, Any]) -> dict[str, JSONValue]:
    """Only the fields the client set: UNSET is absent, None is an explicit null."""
    return {key: value for key, value in values.items() if value is not strawberry.UNSET}


def create_document(data: CreateProfileInput) -> dict[str, JSONValue]:
    return _document(
        {
            "handle": data.handle,
            "emails": _emails(data.emails),
            "region": data.region,
            "display_name": data.display_name,
            "bio": data.bio,
            "avatar_url": data.avatar_url,
            "locale": data.locale,
            "timezone": data.timezone,
            "links": _links(data.links) if data.links is not strawberry.UNSET else strawberry.UNSET,
            "attributes": data.attributes,
        }
    )


def merge_patch(patch: ProfilePatch) -> dict[str, JSONValue]:
    emails: Any = patch.emails
    return _document(
        {
            "handle": patch.handle,
            "emails": _emails(emails) if emails not in (None, strawberry.UNSET) else emails,
            "display_name": patch.display_name,
            "bio": patch.bio,
            "avatar_url": patch.avatar_url,
            "locale": patch.locale,
            "timezone": patch.timezone,
            "links": _links(patch.links) if patch.links is not strawberry.UNSET else strawberry.UNSET,
            "attributes": patch.attributes,
        }
    )
