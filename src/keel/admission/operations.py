"""The operations a caller can ask for, whatever the protocol: their name, the priority the load
shedder gives them, and the rate-limit units they cost unless the configuration says otherwise
(`KEEL_RATELIMIT_COSTS`, by name).

This is the one table. Each protocol keeps only a thin mapping from its own words (a REST
method and path, a gRPC method, a GraphQL root field) to an entry here, so a new operation is
priced and prioritized once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.resilience.load_shedder import Priority


@dataclass(frozen=True, slots=True)
class Operation:
    """`name` is how the configuration and the rate-limit catalog name it; `cost` its default
    price in rate-limit units."""

    name: str
    priority: Priority
    cost: int


# Writes and single reads are critical (a user waits on them and they are cheap to serve);
# lists are the first to be shed, being the dearest and the easiest to retry later.
PROFILES_GET = Operation("profiles.get", Priority.CRITICAL, cost=1)
PROFILES_LIST = Operation("profiles.list", Priority.SHEDDABLE, cost=10)
PROFILES_CREATE = Operation("profiles.create", Priority.CRITICAL, cost=5)
PROFILES_UPDATE = Operation("profiles.update", Priority.CRITICAL, cost=5)
PROFILES_DELETE = Operation("profiles.delete", Priority.CRITICAL, cost=5)
# Whether a handle is free (a sign-up form asks as the user types): one indexed lookup.
HANDLES_CHECK = Operation("handles.check", Priority.CRITICAL, cost=1)
# Webhook administration (admin keys): rare, never worth shedding before a profile list.
WEBHOOKS_ADMIN = Operation("webhooks.admin", Priority.NORMAL, cost=1)
# Export and erasure: rare admin work, served after what users wait on.
PERSONAL_DATA_EXPORT = Operation("personal_data.export", Priority.NORMAL, cost=10)
ERASURES_START = Operation("erasures.start", Priority.NORMAL, cost=5)
ERASURES_GET = Operation("erasures.get", Priority.NORMAL, cost=1)
# Anything else a protocol serves under admission (the caller's own key, an unknown path).
OTHER = Operation("other", Priority.NORMAL, cost=1)

OPERATIONS: dict[str, Operation] = {
    operation.name: operation
    for operation in (
        PROFILES_GET,
        PROFILES_LIST,
        PROFILES_CREATE,
        PROFILES_UPDATE,
        PROFILES_DELETE,
        HANDLES_CHECK,
        WEBHOOKS_ADMIN,
        PERSONAL_DATA_EXPORT,
        ERASURES_START,
        ERASURES_GET,
        OTHER,
    )
}


# The price list the rate-limit catalog starts from; the configuration may change any price.
DEFAULT_COSTS: dict[str, int] = {operation.name: operation.cost for operation in OPERATIONS.values()}


def operation_named(name: str) -> Operation:
    """The operation of that name; `OTHER` for a name not in the table."""
    return OPERATIONS.get(name, OTHER)
