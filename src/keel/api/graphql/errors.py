"""Errors as GraphQL sends them: `message`, `locations`, `path` and a stable `extensions.code`.

Domain errors (`KeelError`) keep their message and carry what a client needs to react (field
errors, the current version, when to retry). Anything else raised under a resolver is a bug: it is
logged with the request id and answered INTERNAL_SERVER_ERROR, never with its text or a trace.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from graphql import GraphQLError, GraphQLSyntaxError

from keel.domain.errors import (
    Conflict,
    KeelError,
    Misdirected,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
)

_log = structlog.get_logger("keel.graphql")

# Codes whose GraphQL name is not simply the domain code in upper case.
_RENAMED = {"quota-exceeded": "RATE_LIMITED", "temporary-reduced-capacity": "UNAVAILABLE"}

PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
BAD_USER_INPUT = "BAD_USER_INPUT"
INTERNAL = "INTERNAL_SERVER_ERROR"


def error_code(error: KeelError) -> str:
    return _RENAMED.get(error.code) or error.code.upper().replace("-", "_")


def domain_extensions(error: KeelError) -> dict[str, Any]:
    extensions: dict[str, Any] = {"code": error_code(error)}
    if isinstance(error, ValidationFailed):
        extensions["fieldErrors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    elif isinstance(error, Conflict):
        extensions["fieldErrors"] = [{"field": error.field, "message": error.detail}]
    elif isinstance(error, VersionMismatch) and error.current_version is not None:
        extensions["currentVersion"] = error.current_version
    elif isinstance(error, Misdirected):
        extensions["homeRegion"] = error.home_region
    retry_after = error.retry_after if isinstance(error, Unavailable) else getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float):
        extensions["retryAfter"] = max(1, math.ceil(retry_after))
    return extensions


def format_error(error: GraphQLError, *, during_execution: bool) -> dict[str, Any]:
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path is not None:
        formatted["path"] = error.path
    original = error.original_error
    if isinstance(original, KeelError):
        formatted["message"] = original.detail
        formatted["extensions"] = domain_extensions(original)
    elif during_execution and error.path is None:
        # Outside any field: the variables could not be coerced to their declared types (the
        # message is graphql-core's, naming the variable and the expected type).
        formatted["extensions"] = {"code": BAD_USER_INPUT}
    elif isinstance(original, GraphQLError) and original.nodes:
        # graphql-core refused an argument of this field, pointing at the value in the document:
        # e.g. a nullable variable explicitly null where the argument is non-null with a default
        # (`query($n: Int) { profiles(first: $n) }`), which validation lets through.
        formatted["extensions"] = {"code": BAD_USER_INPUT}
    elif original is not None:
        _log.error("graphql_resolver_failed", path=error.path, exc_info=original)
        formatted["message"] = "Internal error; it has been logged."
        formatted["extensions"] = {"code": INTERNAL}
    elif isinstance(error, GraphQLSyntaxError):
        formatted["extensions"] = {"code": PARSE_FAILED}
    else:
        # Before execution: the document broke a validation rule. During execution, with no
        # exception behind it: a value could not be completed (e.g. an argument of a field).
        formatted["extensions"] = {"code": BAD_USER_INPUT if during_execution else VALIDATION_FAILED}
    return formatted


# Errors of the server's, not the caller's: what a 5xx is on REST (the domain's `Unavailable`
# family: load shedding, a deadline, an unknown outcome, an edge whose own key the core refused;
# and a resolver's bug).
SERVER_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "OUTCOME_UNKNOWN", "EDGE_REJECTED", INTERNAL})


def slo_outcome(errors: list[dict[str, Any]]) -> str:
    """An executed operation's outcome for the SLOs (`keel_graphql_request_duration_seconds`):
    `server_error` if any error is the server's, `caller_error` if all are the caller's, `ok`
    without errors."""
    if not errors:
        return "ok"
    codes = {error.get("extensions", {}).get("code") for error in errors}
    return "server_error" if codes & SERVER_CODES else "caller_error"


def request_error(code: str, message: str, **extensions: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, **extensions}}
