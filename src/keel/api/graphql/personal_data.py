"""Erasure in GraphQL: the `eraseProfile` mutation (starts the saga, returns its status) and the
`erasure` query (the status by id). Admin keys only, like REST; the export is REST's alone (one
JSON document, not a graph)."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.types import Info

from keel.api.timestamps import timestamp
from keel.domain.erasure import ErasureStep
from keel.domain.errors import Unavailable
from keel.service.erasure import ErasureStatus
from keel.service.use_cases import PersonalDataUseCases

from .context import GraphQLContext
from .types import DateTime

KeelInfo = Info[GraphQLContext, None]


@strawberry.type(name="ErasureStep")
class ErasureStepNode:
    name: str = strawberry.field(
        description="remove_personal_data, drop_cached_copies, erase_stream_copies,"
        " publish_erased_event, await_acknowledgements or finish."
    )
    done: bool
    done_at: DateTime | None


@strawberry.type(name="Erasure", description="An erasure saga's status (GET /v1/erasures/{id} in REST).")
class ErasureNode:
    id: strawberry.ID
    profile_id: strawberry.ID
    state: str = strawberry.field(description="running, completed or failed.")
    requested_at: DateTime
    give_up_at: DateTime
    finished_at: DateTime | None
    next_step: str | None
    steps: list[ErasureStepNode]
    pending_holders: list[str] = strawberry.field(
        description="Consumers holding personal data that have not acknowledged the erased event."
    )
    attempts: int
    last_error: str | None


def _time(value: datetime | None) -> DateTime | None:
    return DateTime(timestamp(value)) if value is not None else None


def erasure_node(status: ErasureStatus) -> ErasureNode:
    e = status.erasure
    return ErasureNode(
        id=strawberry.ID(e.id),
        profile_id=strawberry.ID(e.profile_id),
        state=e.state.value,
        requested_at=DateTime(timestamp(e.requested_at)),
        give_up_at=DateTime(timestamp(e.give_up_at)),
        finished_at=_time(e.finished_at),
        next_step=e.next_step.value if e.next_step is not None else None,
        steps=[
            ErasureStepNode(name=s.value, done=e.done_at(s) is not None, done_at=_time(e.done_at(s)))
            for s in ErasureStep
        ],
        pending_holders=list(status.pending_holders),
        attempts=e.attempts,
        last_error=e.last_error,
    )


def _personal_data(context: GraphQLContext) -> PersonalDataUseCases:
    if context.personal_data is None:
        raise Unavailable("Erasure is served by a core, not by an edge: ask the core.")
    return context.personal_data


async def erase_profile(info: KeelInfo, id: strawberry.ID) -> ErasureNode:
    context = info.context
    context.meter.charge("erasures.start")
    return erasure_node(await _personal_data(context).start_erasure(context.caller(), str(id)))


async def resolve_erasure(info: KeelInfo, id: strawberry.ID) -> ErasureNode:
    context = info.context
    context.meter.charge("erasures.get")
    return erasure_node(await _personal_data(context).erasure_status(context.caller(), str(id)))
