"""Domain errors to and from gRPC statuses with rich details (google.rpc.Status).

Every error carries an ErrorInfo whose `reason` is the error's stable code in upper snake case
(`VERSION_MISMATCH`), so a client can branch on it; the other details are the standard ones:
BadRequest for field errors, RetryInfo when trying again later may work, QuotaFailure for the
rate-limit policies that refused a call. The edge turns them back into the very errors the
core raised, so REST and GraphQL answer an edge's callers as a monolith would.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from keel.domain.errors import (
    CapacityReduced,
    ConcurrentModification,
    Conflict,
    DeadlineExceeded,
    FieldError,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KeelError,
    Misdirected,
    NotFound,
    OutcomeUnknown,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
)

DOMAIN = "keel"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Bounds on what an error carries in the trailers (see `message`); with them an error always
# fits the metadata limit both ends set (`MAX_METADATA_BYTES`).
MAX_MESSAGE_CHARS = 2_000
MAX_FIELD_VIOLATIONS = 1_000
MAX_METADATA_BYTES = 1024 * 1024
# The largest answer either end accepts: 500 profiles of up to 64 KiB each, and some room.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The largest request a server accepts: one profile (at most 64 KiB as JSON, somewhat more as a
# message), or a batch of 500 ids, with room to spare; no more than REST lets through.
MAX_REQUEST_BYTES = 1024 * 1024


class CoreUnreachable(Unavailable):
    """The call did not reach the core, or its answer did not come back: the network, the
    core's process, a proxy. Safe to retry for calls that are idempotent."""


class CoreTimedOut(DeadlineExceeded):
    """No answer from the core within the deadline; whether it did the work is not known."""


class EdgeRejected(Unavailable):
    """The core refused the edge's own key (revoked, or without the `edge` scope): no caller of
    that edge can be served until an operator fixes the edge's configuration. To the edge's
    callers this is the service being unavailable, not their key being wrong."""

    code = "edge-rejected"


_STATUS: dict[type[KeelError], grpc.StatusCode] = {
    ValidationFailed: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    VersionMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    IdempotencyKeyReused: grpc.StatusCode.FAILED_PRECONDITION,
    Misdirected: grpc.StatusCode.FAILED_PRECONDITION,
    IdempotencyInProgress: grpc.StatusCode.ABORTED,
    ConcurrentModification: grpc.StatusCode.ABORTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    EdgeRejected: grpc.StatusCode.UNAUTHENTICATED,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Errors with a detail string only, by reason.
_PLAIN: dict[str, type[KeelError]] = {
    cls.code.upper().replace("-", "_"): cls
    for cls in (
        NotFound,
        ConcurrentModification,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        Unauthenticated,
        Forbidden,
    )
}


def reason(error: KeelError) -> str:
    return error.code.upper().replace("-", "_")


def status_code(error: KeelError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = _STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


def to_status(error: KeelError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The status code and the google.rpc.Status (for the details trailer) of a domain error."""
    code = status_code(error)
    metadata: dict[str, str] = {}
    details: list[object] = []
    retry_after: float | None = None
    if isinstance(error, ValidationFailed):
        shown = error.errors[:MAX_FIELD_VIOLATIONS]
        if len(error.errors) > len(shown):
            shown = [*shown, FieldError("", f"and {len(error.errors) - len(shown)} more errors")]
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=e.field, description=e.message)
                    for e in shown
                ]
            )
        )
    elif isinstance(error, Conflict):
        metadata["field"] = error.field
    elif isinstance(error, VersionMismatch) and error.current_version is not None:
        metadata["current_version"] = str(error.current_version)
    elif isinstance(error, Misdirected):
        metadata["home_region"] = error.home_region
    elif isinstance(error, QuotaExceeded):
        retry_after = error.retry_after
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject="client", description=policy)
                    for policy in error.violated_policies
                ]
            )
        )
    elif isinstance(error, Unavailable):
        retry_after = error.retry_after
    elif isinstance(error, IdempotencyInProgress | ConcurrentModification):
        retry_after = 1.0
    if retry_after is not None:
        seconds = max(0.0, retry_after)
        details.append(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=int(seconds), nanos=round((seconds % 1) * 1e9) % 1_000_000_000
                )
            )
        )
    info = error_details_pb2.ErrorInfo(reason=reason(error), domain=DOMAIN, metadata=metadata)
    status = status_pb2.Status(
        code=code.value[0], message=message(error), details=[_pack(info), *map(_pack, details)]
    )
    return code, status


def message(error: KeelError) -> str:
    """The error's detail, bounded: it travels in the trailers (twice: as `grpc-message` and in
    the status details), whose size gRPC limits."""
    detail = error.detail
    return detail if len(detail) <= MAX_MESSAGE_CHARS else detail[: MAX_MESSAGE_CHARS - 1] + "…"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: Sequence[tuple[str, str | bytes]]
) -> KeelError:
    """The domain error a failed call stands for. Statuses without Keel's details (the network,
    a proxy, an unexpected failure of the core) become `Unavailable` or `DeadlineExceeded`."""
    status = _details(trailing_metadata)
    info = error_details_pb2.ErrorInfo()
    violations: list[FieldError] = []
    policies: list[str] = []
    retry_after: float | None = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldError(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                policies = [v.description for v in quota.violations]
    if info.domain != DOMAIN:
        return _transport_error(code, message)
    wait = 1.0 if retry_after is None else retry_after
    match info.reason:
        case "VALIDATION":
            return ValidationFailed(violations, message)
        case "CONFLICT":
            return Conflict(message, info.metadata.get("field", ""))
        case "VERSION_MISMATCH":
            current = info.metadata.get("current_version")
            return VersionMismatch(message, current_version=int(current) if current else None)
        case "QUOTA_EXCEEDED":
            return QuotaExceeded(message, wait, tuple(policies))
        case "MISDIRECTED":
            return Misdirected(message, info.metadata.get("home_region", ""))
        case "OUTCOME_UNKNOWN":
            return OutcomeUnknown(message, wait)
        case "EDGE_REJECTED":
            return EdgeRejected(message, wait)
        case "TEMPORARY_REDUCED_CAPACITY":
            return CapacityReduced(message, wait)
        case "DEADLINE_EXCEEDED":
            return DeadlineExceeded(message, wait)
        case "UNAVAILABLE":
            return Unavailable(message, wait)
    plain = _PLAIN.get(info.reason)
    return plain(message) if plain is not None else _transport_error(code, message)


def _transport_error(code: grpc.StatusCode, message: str) -> KeelError:
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CoreTimedOut("The core did not answer within the request's deadline.")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated("The API key is not valid.")
    if code is grpc.StatusCode.UNAVAILABLE:
        return CoreUnreachable("The core cannot be reached.")
    return Unavailable(f"The core could not serve the request ({code.name}).")


def _details(trailing_metadata: Sequence[tuple[str, str | bytes]]) -> status_pb2.Status | None:
    for key, value in trailing_metadata:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - a garbled trailer is treated as no details
                return None
            return status
    return None
