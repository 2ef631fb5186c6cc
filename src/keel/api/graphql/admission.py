"""Admission of a GraphQL request, as REST's: who is calling, whether the plan can afford the
operation at all, the RateLimit headers, and the load shedder's priority and latency class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
)
from starlette.requests import Request

from keel.api.rest.dependencies import ONE_AUTHORIZATION, bearer_token
from keel.domain.api_keys import Principal
from keel.domain.errors import KeelError, Unauthenticated
from keel.observability.context import note_caller
from keel.resilience.load_shedder import Priority

from .errors import request_error

if TYPE_CHECKING:
    from keel.bootstrap import Keel
    from keel.ratelimit.catalog import RateLimitCatalog
    from keel.ratelimit.guard import RateLimitOutcome
    from keel.ratelimit.policy import Plan


@dataclass
class Admitted:
    """A request the limiter let through: release its client's slot, refund what it did not use."""

    client: str
    plan: Plan
    outcome: RateLimitOutcome


async def authenticate(request: Request, keel: Keel) -> tuple[Principal | None, KeelError | None]:
    """Once per request, as REST's admission does; the reason for no principal is kept for the
    resolvers that need one (an introspection query needs none)."""
    if len(request.headers.getlist("authorization")) > 1:
        return None, Unauthenticated(ONE_AUTHORIZATION)
    token = bearer_token(request.headers.get("authorization"))
    if not token:
        return None, Unauthenticated("An API key is required: Authorization: Bearer <key>.")
    try:
        principal = await keel.authenticator.authenticate(token)
    except KeelError as error:
        return None, error
    note_caller(principal.key_id)
    return principal, None


def shedding_class(document: DocumentNode, operation: OperationDefinitionNode) -> tuple[Priority, str]:
    """The priority, as REST's (writes critical, lists sheddable, single reads critical), and
    the latency class the adaptive limit compares like with like in: the root fields asked for
    (a handful of names, so a bounded set of classes)."""
    roots = sorted(root_fields(document, operation))
    if operation.operation is OperationType.MUTATION:
        priority = Priority.CRITICAL
    else:
        priority = Priority.SHEDDABLE if "profiles" in roots else Priority.CRITICAL
    return priority, f"graphql {operation.operation.value} {','.join(roots)}"


def above_burst(
    catalog: RateLimitCatalog, principal: Principal | None, requested: int
) -> dict[str, Any] | None:
    """The error for an operation dearer than the caller's plan could ever admit at once."""
    plan = catalog.plan_named(principal.plan if principal else None)
    burst = plan.smallest_burst
    if not burst or requested <= burst:
        return None
    return request_error(
        "COST_LIMIT_EXCEEDED",
        f"The operation may cost {requested} units; the plan {plan.name!r} allows at most {burst}"
        " at once. Ask for fewer profiles or split the operation.",
        cost={"requested": requested, "maximum": burst},
    )


def root_fields(document: DocumentNode, operation: OperationDefinitionNode) -> set[str]:
    """The names of the root fields, also when written in fragments (`{ ...F }`), so that a list
    wrapped in a fragment is still shed as a list."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    names: set[str] = set()
    spread: set[str] = set()
    pending = [operation.selection_set]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                names.add(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in spread:
                spread.add(selection.name.value)
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    pending.append(fragment.selection_set)
    return names


def limit_headers(outcome: RateLimitOutcome) -> dict[str, str]:
    headers = {"RateLimit-Policy": outcome.plan.policy_header}
    if outcome.ratelimit_header is not None:
        headers["RateLimit"] = outcome.ratelimit_header
    return headers


def remaining_after(admitted: Admitted, refunded: int) -> int | None:
    decision = admitted.outcome.decision
    closest = decision.closest if decision is not None else None
    if closest is None:
        return None
    return min(closest.policy.burst, closest.remaining + max(0, refunded))
