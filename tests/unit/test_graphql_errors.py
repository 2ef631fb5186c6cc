"""Domain errors become GraphQL errors with stable codes; anything else is masked."""

from __future__ import annotations

from collections.abc import Sequence

from graphql import FieldNode, GraphQLError, OperationDefinitionNode, parse

from keel.api.graphql.errors import error_code, format_error
from keel.domain.errors import (
    ConcurrentModification,
    Conflict,
    FieldError,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KeelError,
    NotFound,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
)


class _Quota(KeelError):
    code = "quota-exceeded"  # the code of the service's quota error (a remote core may raise it)


def test_codes_are_the_domain_codes_in_graphql_spelling() -> None:
    assert [
        error_code(e)
        for e in (
            NotFound("x"),
            Conflict("x", "/handle"),
            VersionMismatch("x", 3),
            ValidationFailed([]),
            Forbidden("x"),
            Unauthenticated("x"),
            Unavailable("x"),
            IdempotencyKeyReused("x"),
            IdempotencyInProgress("x"),
            ConcurrentModification("x"),
            _Quota("x"),
        )
    ] == [
        "NOT_FOUND",
        "CONFLICT",
        "VERSION_MISMATCH",
        "VALIDATION",
        "FORBIDDEN",
        "UNAUTHENTICATED",
        "UNAVAILABLE",
        "IDEMPOTENCY_KEY_REUSED",
        "IDEMPOTENCY_IN_PROGRESS",
        "CONCURRENT_MODIFICATION",
        "RATE_LIMITED",
    ]


def located(original: Exception) -> GraphQLError:
    return GraphQLError("raw", path=["profile"], original_error=original)


def test_details_a_client_can_act_on() -> None:
    invalid = format_error(
        located(ValidationFailed([FieldError("/handle", "too short")])), during_execution=True
    )
    assert invalid["extensions"] == {
        "code": "VALIDATION",
        "fieldErrors": [{"field": "/handle", "message": "too short"}],
    }
    assert invalid["path"] == ["profile"]
    stale = format_error(located(VersionMismatch("changed", 4)), during_execution=True)
    assert stale["extensions"] == {"code": "VERSION_MISMATCH", "currentVersion": 4}
    assert stale["message"] == "changed"
    busy = format_error(located(Unavailable("down", retry_after=2.5)), during_execution=True)
    assert busy["extensions"] == {"code": "UNAVAILABLE", "retryAfter": 3}


def test_unexpected_exceptions_are_masked() -> None:
    formatted = format_error(located(RuntimeError("SELECT secret FROM keys")), during_execution=True)
    assert formatted["message"] == "Internal error; it has been logged."
    assert formatted["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert "SELECT" not in str(formatted)


def test_an_argument_graphql_core_refuses_is_the_clients_mistake() -> None:
    # graphql-core points at the argument's value in the document (here the `$n` variable).
    document = parse("query Q($n: Int) { profiles(first: $n) { totalCount } }")
    query = document.definitions[0]
    assert isinstance(query, OperationDefinitionNode)
    profiles = query.selection_set.selections[0]
    assert isinstance(profiles, FieldNode)
    assert profiles.arguments
    value = profiles.arguments[0].value
    refused = GraphQLError("Argument 'first' of non-null type 'Int!' must not be null.", value)
    formatted = format_error(located(refused), during_execution=True)
    assert formatted["extensions"] == {"code": "BAD_USER_INPUT"}
    # A value Keel produced and could not serialize has no location: a bug, masked.
    unserializable = format_error(located(GraphQLError("Int cannot represent 2**40")), during_execution=True)
    assert unserializable["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}


def test_the_slos_count_only_the_servers_errors_against_availability() -> None:
    """What a 5xx is on REST (`Unavailable` and its kinds, load shedding, a resolver's bug) is a
    `server_error`; every other domain error is the caller's."""
    from keel.api.graphql.errors import slo_outcome
    from keel.api.grpc.wire.status import CoreTimedOut, CoreUnreachable, EdgeRejected
    from keel.domain.errors import CapacityReduced, CircuitOpen, DeadlineExceeded, OutcomeUnknown

    def outcome(error: Exception) -> str:
        raised = GraphQLError("x", path=["profile"], original_error=error)  # under a resolver
        return slo_outcome([format_error(raised, during_execution=True)])

    servers: list[Exception] = [Unavailable("x"), CircuitOpen("x"), DeadlineExceeded("x")]
    servers += [OutcomeUnknown("x"), CapacityReduced("x"), EdgeRejected("x"), CoreTimedOut("x")]
    servers += [CoreUnreachable("x"), RuntimeError("a bug")]
    assert {outcome(error) for error in servers} == {"server_error"}
    callers = [NotFound("x"), ValidationFailed([]), Forbidden("x"), Unauthenticated("x"), _Quota("x")]
    callers += [VersionMismatch("x", 2), ConcurrentModification("x"), IdempotencyInProgress("x")]
    assert {outcome(error) for error in callers} == {"caller_error"}
    assert slo_outcome([]) == "ok"
    # Every kind of `Unavailable` the code knows is in the list (a new one must be added there).
    unavailable_kinds = {type(error) for error in servers if isinstance(error, Unavailable)}
    assert unavailable_kinds >= set(_subclasses(Unavailable)), (
        set(_subclasses(Unavailable)) - unavailable_kinds
    )


def _subclasses(cls: type) -> list[type]:
    found = [cls]
    subclasses: Sequence[type[Exception]] = cls.__subclasses__()
    for sub in subclasses:
        found += _subclasses(sub)
    return found
