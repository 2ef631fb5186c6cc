"""The schema: queries and mutations, each a thin call of one use case through the request's
context (see `context.py`); wire shapes are built in `mapping.py`."""

from __future__ import annotations

from typing import Annotated

import strawberry
from graphql import GraphQLSchema
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from keel.admission.operations import HANDLES_CHECK
from keel.domain.api_keys import Scope
from keel.domain.errors import Forbidden, NotFound
from keel.service.end_users import NOT_SET_UP
from keel.service.use_cases import EndUserUseCases, ListFilters, answer_shows_profile

from .context import GraphQLContext
from .limits import DEFAULT_PAGE_SIZE
from .mapping import connection_node, create_document, merge_patch, profile_node, viewer_node
from .personal_data import ErasureNode, erase_profile, resolve_erasure
from .strawberry_internals import core_schema
from .types import (
    SCALARS,
    CreateProfileInput,
    CreateProfilePayload,
    DeleteProfilePayload,
    ProfileConnectionNode,
    ProfileFilter,
    ProfileNode,
    ProfilePatch,
    ViewerNode,
)

KeelInfo = Info[GraphQLContext, None]


async def resolve_profile(info: KeelInfo, id: strawberry.ID) -> ProfileNode | None:
    found = await info.context.loaders.by_id.load(str(id))
    return profile_node(found) if found is not None else None


async def resolve_profile_by_handle(info: KeelInfo, handle: str) -> ProfileNode | None:
    found = await info.context.loaders.by_handle.load(handle)
    if found is None:
        return None
    info.context.loaders.remember(found)
    return profile_node(found)


async def resolve_handle_available(
    info: KeelInfo, handle: Annotated[str, strawberry.argument(description="3-30 of a-z, 0-9 and _.")]
) -> bool:
    context = info.context
    context.meter.charge(HANDLES_CHECK.name)
    return await context.profiles.handle_available(context.caller(), handle)


async def resolve_profiles(
    info: KeelInfo,
    first: Annotated[int, strawberry.argument(description="Page size, 1 to 100.")] = DEFAULT_PAGE_SIZE,
    after: Annotated[str | None, strawberry.argument(description="pageInfo.endCursor of a page.")] = None,
    filter: ProfileFilter | None = None,
) -> ProfileConnectionNode:
    context = info.context
    wanted = filter or ProfileFilter()
    filters = ListFilters(
        handle=wanted.handle,
        email=wanted.email,
        ids=tuple(str(i) for i in wanted.ids) if wanted.ids is not None else None,
    )
    context.meter.charge("profiles.list")
    page = await context.profiles.list_profiles(context.caller(), filters, limit=first, cursor=after)
    return connection_node(page, after=after)


def resolve_viewer(info: KeelInfo) -> ViewerNode:
    return viewer_node(info.context.caller())


async def create_profile(info: KeelInfo, input: CreateProfileInput) -> CreateProfilePayload:
    context = info.context
    context.meter.charge("profiles.create")
    created = await context.profiles.create_profile(
        context.caller(), create_document(input), idempotency_key=context.idempotency_key
    )
    context.loaders.remember(created.profile)
    return CreateProfilePayload(profile=profile_node(created.profile), replayed=created.replayed)


async def update_profile(
    info: KeelInfo, id: strawberry.ID, patch: ProfilePatch, expected_version: int | None = None
) -> ProfileNode:
    context = info.context
    if not answer_shows_profile(context.caller()):
        _only_receipt_fields(info)
    context.meter.charge("profiles.update")
    profile = await context.profiles.update_profile(
        context.caller(), str(id), merge_patch(patch), expected_version=expected_version
    )
    context.loaders.remember(profile)
    return profile_node(profile)


async def delete_profile(
    info: KeelInfo, id: strawberry.ID, expected_version: int | None = None
) -> DeleteProfilePayload:
    context = info.context
    context.meter.charge("profiles.delete")
    await context.profiles.delete_profile(context.caller(), str(id), expected_version=expected_version)
    context.loaders.forget(str(id))
    return DeleteProfilePayload(id=id)


def _end_users(context: GraphQLContext) -> EndUserUseCases:
    if context.end_users is None:
        raise NotFound(NOT_SET_UP)
    return context.end_users


async def resolve_me(info: KeelInfo) -> ProfileNode:
    # Not remembered by the loaders: this is the end user's view, and `profile(id)` is not theirs.
    context = info.context
    context.meter.charge("profiles.get")
    read = await _end_users(context).me(context.caller())
    return profile_node(read.profile)


async def update_me(info: KeelInfo, patch: ProfilePatch, expected_version: int | None = None) -> ProfileNode:
    context = info.context
    context.meter.charge("profiles.update")
    profile = await _end_users(context).update_me(
        context.caller(), merge_patch(patch), expected_version=expected_version
    )
    return profile_node(profile)


# The GraphQL names of `RECEIPT_FIELDS`, and what every selection may ask.
_RECEIPT_SELECTION = frozenset({"id", "version", "createdAt", "updatedAt", "__typename"})


def _only_receipt_fields(info: KeelInfo) -> None:
    """Refuse, before anything is written, an update by a key without `profiles:read` whose
    selection asks for more than the write's receipt (see `answer_shows_profile`)."""
    pending: list[Selection] = [s for field in info.selected_fields for s in field.selections]
    while pending:
        selection = pending.pop()
        if isinstance(selection, SelectedField) and selection.name not in _RECEIPT_SELECTION:
            raise Forbidden(
                f"This API key lacks the `{Scope.PROFILES_READ}` scope: the answer to an update may "
                f"select only {', '.join(sorted(_RECEIPT_SELECTION - {'__typename'}))}."
            )
        if not isinstance(selection, SelectedField):
            pending.extend(selection.selections)


@strawberry.type
class Query:
    profile: ProfileNode | None = strawberry.field(
        resolver=resolve_profile, description="A profile by id; null when there is none."
    )
    profile_by_handle: ProfileNode | None = strawberry.field(
        resolver=resolve_profile_by_handle,
        description="A profile by handle (case-insensitive); null when there is none.",
    )
    profiles: ProfileConnectionNode = strawberry.field(
        resolver=resolve_profiles, description="Profiles in id order, a page at a time (keyset pagination)."
    )
    handle_available: bool = strawberry.field(
        resolver=resolve_handle_available,
        description="Whether a profile could be created with this handle now: no live profile holds"
        " it (a deleted one frees its handle). A handle no profile may have is a VALIDATION error.",
    )
    viewer: ViewerNode = strawberry.field(
        resolver=resolve_viewer, description="The API key making this request."
    )
    erasure: ErasureNode = strawberry.field(
        resolver=resolve_erasure, description="An erasure's status by id (admin keys only)."
    )
    me: ProfileNode = strawberry.field(
        resolver=resolve_me,
        description="Your own profile, for end users (an access token of the issuer, not an API key):"
        " every field but the attributes the schema does not show end users. NOT_FOUND when no"
        " profile is linked to you.",
    )


@strawberry.type
class Mutation:
    create_profile: CreateProfilePayload = strawberry.mutation(
        resolver=create_profile,
        description="Create a profile. With an `Idempotency-Key` HTTP header, a retry of the same"
        " request returns the first result (replayed: true) instead of creating a duplicate.",
    )
    update_profile: ProfileNode = strawberry.mutation(
        resolver=update_profile,
        description="Change a profile with a merge patch; refused with VERSION_MISMATCH when"
        " expectedVersion is given and the profile is at another version.",
    )
    delete_profile: DeleteProfilePayload = strawberry.mutation(
        resolver=delete_profile, description="Soft delete: the profile is gone for every reader."
    )
    update_me: ProfileNode = strawberry.mutation(
        resolver=update_me,
        description="Change your own profile with a merge patch (end users), within the fields an end"
        " user may change: a patch touching any other is refused whole with FORBIDDEN, naming them.",
    )
    erase_profile: ErasureNode = strawberry.mutation(
        resolver=erase_profile,
        description="Start erasing a profile's personal data (admin keys only); returns the erasure's"
        " status at once. Asked again, returns the same erasure.",
    )


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(query=Query, mutation=Mutation, config=StrawberryConfig(scalar_map=SCALARS))


def graphql_core_schema(schema: strawberry.Schema) -> GraphQLSchema:
    """The graphql-core schema Strawberry built (see `strawberry_internals.core_schema`)."""
    return core_schema(schema)


def schema_sdl() -> str:
    """The schema in SDL, as exported to `contracts/graphql/keel.graphql`."""
    return build_schema().as_str() + "\n"
