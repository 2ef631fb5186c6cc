"""The one exception tree of Keel.

Every protocol maps these once (problem+json for REST, error codes for GraphQL, status codes
for gRPC); nothing below carries SQL, stack traces or secrets, so a message is safe to show.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid input field: a JSON-pointer-like location and a human message."""

    field: str
    message: str


class KeelError(Exception):
    """Base of every error a caller may see. `code` is stable and part of the API."""

    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ValidationFailed(KeelError):
    code = "validation"

    def __init__(self, errors: list[FieldError], detail: str = "The request is not valid.") -> None:
        super().__init__(detail)
        self.errors = errors


class NotFound(KeelError):
    code = "not-found"


class Conflict(KeelError):
    """A uniqueness rule would be broken (handle or email already used by a live profile)."""

    code = "conflict"

    def __init__(self, detail: str, field: str) -> None:
        super().__init__(detail)
        self.field = field


class VersionMismatch(KeelError):
    """The caller's expected version (If-Match) is not the current one."""

    code = "version-mismatch"

    def __init__(self, detail: str, current_version: int | None) -> None:
        super().__init__(detail)
        self.current_version = current_version


class ConcurrentModification(KeelError):
    """Other writers kept changing the profile; retrying the request is safe."""

    code = "concurrent-modification"


class IdempotencyKeyReused(KeelError):
    """The same idempotency key came back with a different request."""

    code = "idempotency-key-reused"


class IdempotencyInProgress(KeelError):
    """A request with the same idempotency key is still being processed."""

    code = "idempotency-in-progress"


class Unauthenticated(KeelError):
    code = "unauthenticated"


class Forbidden(KeelError):
    code = "forbidden"


class Unavailable(KeelError):
    """A dependency (the database) cannot serve the request now; the caller may retry, after
    `retry_after` seconds. A write is never half-applied; a write whose commit got no answer
    (a timeout) may have been applied, which a retry with its `Idempotency-Key` or `If-Match`
    settles."""

    code = "unavailable"

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class CircuitOpen(Unavailable):
    """The dependency failed so often that calls to it are refused for a while, without trying:
    fail fast rather than queue behind something that is down."""


class DeadlineExceeded(Unavailable):
    """The request's deadline passed before a dependency answered."""

    code = "deadline-exceeded"


class OutcomeUnknown(Unavailable):
    """A write was sent on and no answer came back (an edge whose core went silent): it may or
    may not have been made. Retry only with an `Idempotency-Key` or `If-Match`, after a read."""

    code = "outcome-unknown"


class CapacityReduced(Unavailable):
    """The service sheds load to stay within its capacity; the caller may retry later."""

    code = "temporary-reduced-capacity"


class Misdirected(KeelError):
    """The profile lives in another region (its id says which, `home_region`): this service
    holds only its own region's profiles, so the request must go there. Never served from the
    wrong store (docs/residency.md)."""

    code = "misdirected"

    def __init__(self, detail: str, home_region: str) -> None:
        super().__init__(detail)
        self.home_region = home_region


class QuotaExceeded(KeelError):
    """The caller's rate-limit quota is spent until `retry_after` seconds from now."""

    code = "quota-exceeded"

    def __init__(self, detail: str, retry_after: float, violated_policies: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.violated_policies = violated_policies
