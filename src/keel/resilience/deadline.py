"""The request's deadline, carried in a ContextVar so that every dependency call below the
protocol layer can bound itself by what is left, without the deadline being passed by hand
through every signature.

A deadline is an absolute time on the event loop's clock (`loop.time()`, what
`asyncio.timeout_at` expects). Scopes only ever tighten: an inner scope with a later deadline
keeps the outer one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("keel_deadline", default=None)


class deadline_in:
    """`with deadline_in(seconds) as at:` runs the block with a deadline `seconds` from now (or
    the current one, if sooner). A class rather than a generator: every request enters one."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> float:
        at = asyncio.get_running_loop().time() + self._seconds
        current = _deadline.get()
        if current is not None and current < at:
            at = current
        self._token = _deadline.set(at)
        return at

    def __exit__(self, *exc_info: object) -> None:
        _deadline.reset(self._token)


@contextmanager
def detached_deadline(seconds: float) -> Iterator[float]:
    """Run the block with its own deadline, whatever the request's: for clean-up that must
    still happen after the request has run out of time (and runs off the request's path)."""
    at = asyncio.get_running_loop().time() + seconds
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


def current_deadline() -> float | None:
    """The absolute deadline of the running request, None outside any request."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the deadline (negative once it has passed); None without one."""
    at = _deadline.get()
    return None if at is None else at - asyncio.get_running_loop().time()


def call_deadline(default_seconds: float) -> float:
    """The absolute deadline for one dependency call: its own timeout, cut to what the request
    has left."""
    at = asyncio.get_running_loop().time() + default_seconds
    request = _deadline.get()
    return at if request is None or at < request else request
