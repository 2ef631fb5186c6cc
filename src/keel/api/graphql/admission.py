"""GraphQL's side of admission (`keel.admission`): which operation of the table a document
performs (for its priority), the latency class the adaptive limit compares it in, and the
GraphQL words for the limits (an operation dearer than the plan's burst, the RateLimit headers,
the units left)."""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
)

from keel.admission import Operation, Ticket
from keel.admission.operations import PROFILES_CREATE, PROFILES_GET
from keel.ratelimit.guard import RateLimitOutcome
from keel.ratelimit.policy import Plan

from .errors import request_error
from .operations import ROOT_FIELD_OPERATIONS


def operation_of(document: DocumentNode, operation: OperationDefinitionNode) -> tuple[Operation, str]:
    """The operation of the table that sets the document's priority (its most sheddable root
    field's, each root field priced and prioritized as its REST route is), and the latency
    class the adaptive limit compares like with like in: the root fields asked for (a handful
    of names, so a bounded set of classes)."""
    roots = sorted(root_fields(document, operation))
    mutation = operation.operation is OperationType.MUTATION
    # A root field the table does not list: a single read, or for a mutation a write.
    unlisted = PROFILES_CREATE if mutation else PROFILES_GET
    kind = "Mutation" if mutation else "Query"
    candidates = [ROOT_FIELD_OPERATIONS.get(f"{kind}.{root}", unlisted) for root in roots] or [unlisted]
    chosen = max(candidates, key=lambda candidate: candidate.priority)  # the first of the most sheddable
    return chosen, f"graphql {operation.operation.value} {','.join(roots)}"


def above_burst(plan: Plan, requested: int) -> dict[str, Any] | None:
    """The error for an operation dearer than the caller's plan could ever admit at once."""
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


def remaining_after(outcome: RateLimitOutcome, refunded: int) -> int | None:
    decision = outcome.decision
    closest = decision.closest if decision is not None else None
    if closest is None:
        return None
    return min(closest.policy.burst, closest.remaining + max(0, refunded))


def ticket_limits(ticket: Ticket | None) -> RateLimitOutcome | None:
    return ticket.limits if ticket is not None else None
