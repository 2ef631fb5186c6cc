"""GraphQL's words for the operations table (`keel.admission.operations`): the operation each
root field performs. That one entry sets both the field's price (`limits`) and the priority of
a document that asks for it (`admission`), as REST's route and gRPC's method each map to one."""

from __future__ import annotations

from keel.admission import Operation
from keel.admission.operations import (
    ERASURES_GET,
    ERASURES_START,
    HANDLES_CHECK,
    PROFILES_CREATE,
    PROFILES_DELETE,
    PROFILES_GET,
    PROFILES_LIST,
    PROFILES_UPDATE,
)

# "Type.field" of the schema -> the operation. A root field not listed (`viewer`) is a single
# read: priced and prioritized as `profiles.get`.
ROOT_FIELD_OPERATIONS: dict[str, Operation] = {
    "Query.profile": PROFILES_GET,
    # A search by handle (the list use case with a filter), as REST's `?handle=` is.
    "Query.profileByHandle": PROFILES_LIST,
    "Query.handleAvailable": HANDLES_CHECK,
    "Query.profiles": PROFILES_LIST,
    "Query.erasure": ERASURES_GET,
    "Query.me": PROFILES_GET,
    "Mutation.updateMe": PROFILES_UPDATE,
    "Mutation.createProfile": PROFILES_CREATE,
    "Mutation.updateProfile": PROFILES_UPDATE,
    "Mutation.deleteProfile": PROFILES_DELETE,
    "Mutation.eraseProfile": ERASURES_START,
    # Introspection calls no use case; without a price, an operation of 15 aliased `__schema`
    # (some 400 kB and 100 ms of CPU) would cost the minimum of one unit. Tooling, not users,
    # asks for it: shed like a list.
    "Query.__schema": PROFILES_LIST,
    "Query.__type": PROFILES_GET,
}
