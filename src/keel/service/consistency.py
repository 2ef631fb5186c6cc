"""Read-your-writes across read replicas: the position a request must read at.

A write on a database with replicas answers a *consistency token*: the primary's WAL position
once its transaction committed (PostgreSQL's LSN, e.g. ``16/B374D848``). A request that carries
it is read only from a replica that has replayed past it, else from the primary; a request that
writes and then reads (a GraphQL document, an edge's calls) reads after its own write too.

The protocol envelopes open a `Consistency` per request (`scope`), reading the token from the
`Keel-Consistency-Token` header or gRPC metadata key, and answer the position the request's
writes reached; the PostgreSQL adapter notes commits (`note_commit`) and routes reads
(`required_position`). Nothing here knows a protocol or a driver.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar

from keel.domain.errors import FieldError, ValidationFailed

TOKEN_NAME = "Keel-Consistency-Token"  # noqa: S105 - a header name, not a secret
TOKEN_RULE = "a consistency token as answered by a write (two hexadecimal numbers: 16/B374D848)"  # noqa: S105
# Past every position a token can carry: no replica has replayed it.
PRIMARY_ONLY = 1 << 64
_TOKEN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class Consistency:
    """One request's positions: what it must read at least (`read_after`, from its token) and
    what its own commits reached (`wrote_at`)."""

    __slots__ = ("position_unknown", "read_after", "wrote_at")

    def __init__(self, read_after: int | None = None) -> None:
        self.read_after = read_after
        self.wrote_at: int | None = None
        # A write committed whose position could not be read: the request's later reads go
        # to the primary, and it answers no token.
        self.position_unknown = False

    @property
    def required(self) -> int | None:
        if self.position_unknown:
            return PRIMARY_ONLY
        positions = [p for p in (self.read_after, self.wrote_at) if p is not None]
        return max(positions) if positions else None

    def answer(self) -> str | None:
        """The token to answer: the position of the request's writes, None if it wrote nothing
        (on a database without replicas, commits note nothing) or its position is unknown."""
        if self.wrote_at is None or self.position_unknown:
            return None
        return format_position(self.wrote_at)


_current: ContextVar[Consistency | None] = ContextVar("keel_consistency", default=None)


def parse_position(token: str) -> int:
    """The position of a token; `ValidationFailed` (pointer `/Keel-Consistency-Token`) when it
    is not one."""
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise ValidationFailed([FieldError(f"/{TOKEN_NAME}", TOKEN_RULE)])
    return int(match.group(1), 16) << 32 | int(match.group(2), 16)


def from_token(token: str | None) -> Consistency:
    """A request's consistency, reading at or past its token (None: no token); `ValidationFailed`
    when the token is not one. What every protocol's envelope opens."""
    return Consistency(parse_position(token) if token is not None else None)


def format_position(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@contextlib.contextmanager
def scope(consistency: Consistency) -> Iterator[Consistency]:
    """`consistency` is the request's, for the code it runs (and the tasks it starts)."""
    reset = _current.set(consistency)
    try:
        yield consistency
    finally:
        _current.reset(reset)


def required_position() -> int | None:
    """The position a read must see (None: any replica within the lag bound may serve it)."""
    consistency = _current.get()
    return consistency.required if consistency is not None else None


def in_request() -> bool:
    """Whether a request's consistency is open (a background job's commits note nothing)."""
    return _current.get() is not None


def note_commit(position: int | None) -> None:
    """A write of this request committed at `position` (None: at a position not known);
    outside a request, nothing to do."""
    consistency = _current.get()
    if consistency is None:
        return
    if position is None:
        consistency.position_unknown = True
    elif consistency.wrote_at is None or position > consistency.wrote_at:
        consistency.wrote_at = position
