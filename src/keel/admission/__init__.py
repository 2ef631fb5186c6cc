"""The one request pipeline of every protocol: operations table (name, cost, priority), client
identity, authenticate → rate-limit → shed → `ticket.finish(outcome)`. Protocol-free: it knows
no HTTP, GraphQL or gRPC; each protocol maps its requests to an `Operation` and translates a
`Refusal` into its own answer."""

from .identity import ONE_SET_OF_CREDENTIALS, Caller, bearer_token, client_identity
from .operations import OPERATIONS, OTHER, Operation, operation_named
from .pipeline import SHED_DETAIL, Admission, Outcome, Refusal, Ticket

__all__ = [
    "ONE_SET_OF_CREDENTIALS",
    "OPERATIONS",
    "OTHER",
    "SHED_DETAIL",
    "Admission",
    "Caller",
    "Operation",
    "Outcome",
    "Refusal",
    "Ticket",
    "bearer_token",
    "client_identity",
    "operation_named",
]
