"""The operations a caller can ask for, whatever the protocol: the name the rate-limit cost table
prices them by, and the priority the load shedder gives them.

This is the one table. Each protocol keeps only a thin mapping from its own words (a REST
method and path, a gRPC method, a GraphQL root field) to an entry here, so a new operation is
priced and prioritized once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.resilience.load_shedder import Priority


@dataclass(frozen=True, slots=True)
class Operation:
    """`name` is also the cost key (see `keel.ratelimit.catalog.DEFAULT_COSTS`)."""

    name: str
    priority: Priority


# Writes and single reads are critical (a user waits on them and they are cheap to serve);
# lists are the first to be shed, being the dearest and the easiest to retry later.
PROFILES_GET = Operation("profiles.get", Priority.CRITICAL)
PROFILES_LIST = Operation("profiles.list", Priority.SHEDDABLE)
PROFILES_CREATE = Operation("profiles.create", Priority.CRITICAL)
PROFILES_UPDATE = Operation("profiles.update", Priority.CRITICAL)
PROFILES_DELETE = Operation("profiles.delete", Priority.CRITICAL)
# Whether a handle is free (a sign-up form asks as the user types): one indexed lookup.
HANDLES_CHECK = Operation("handles.check", Priority.CRITICAL)
# Webhook administration (admin keys): rare, never worth shedding before a profile list.
WEBHOOKS_ADMIN = Operation("webhooks.admin", Priority.NORMAL)
# Export and erasure: rare admin work, served after what users wait on.
PERSONAL_DATA_EXPORT = Operation("personal_data.export", Priority.NORMAL)
ERASURES_START = Operation("erasures.start", Priority.NORMAL)
ERASURES_GET = Operation("erasures.get", Priority.NORMAL)
# Anything else a protocol serves under admission (the caller's own key, an unknown path).
OTHER = Operation("other", Priority.NORMAL)

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


def operation_named(name: str) -> Operation:
    """The operation of that name; `OTHER` for a name not in the table."""
    return OPERATIONS.get(name, OTHER)
