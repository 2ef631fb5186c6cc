"""What the layers of one HTTP request tell each other, as one typed value: the caller once
admission identified it, the API version chosen for it, and whether the request was answered by a refusal.

It lives in a context variable that the outermost layer sets for each request (see
`request_scope`) rather than in ASGI scope keys: the layers (early refusals, envelope, version
picker, admission, routes, GraphQL) then share a declared type instead of string keys that
nothing checks. Every layer runs in the task of the request, below the one that set it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from keel.admission import Caller


class RequestState:
    __slots__ = ("api_version", "caller", "refused", "unrouted_label")

    def __init__(self) -> None:
        # Set by whichever step identified the caller first (early refusals or admission), so
        # that its key is looked up once per request, shared with the version picker and routes.
        self.caller: Caller | None = None
        # Refused by a rate limit or by shedding: such requests get sampled log lines and
        # metrics, not an access-log line each (an abuser must not be able to flood the logs).
        self.refused = False
        # The API version the version picker chose for a `/v1/` request (None before it ran).
        self.api_version: str | None = None
        # The route label of this request if no route takes it (refused before routing, say):
        # a protocol's own (REST: `/v1/*`), else the envelope's `unmatched`.
        self.unrouted_label: str | None = None


_state: ContextVar[RequestState | None] = ContextVar("keel_http_request_state", default=None)


@contextmanager
def request_scope() -> Iterator[RequestState]:
    """A fresh state for the request about to run inside this block; reused if a layer further
    out already opened one for the same request."""
    existing = _state.get()
    if existing is not None:
        yield existing
        return
    state = RequestState()
    token = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(token)


def request_state() -> RequestState:
    """The state of the request being served; a detached one outside any request (it is then
    read by no one)."""
    state = _state.get()
    return state if state is not None else RequestState()
