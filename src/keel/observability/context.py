"""Per-request context shared by logs, errors and traces."""

from __future__ import annotations

from contextvars import ContextVar


class RequestContext:
    """The ids of the request being served, and the API key it turned out to come from (set by
    whichever step authenticates it, so that the access log line can name the key)."""

    __slots__ = ("key_id", "request_id", "trace_id")

    def __init__(self, request_id: str, trace_id: str) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.key_id: str | None = None


# One variable for the whole request context: setting it is one operation, and the log
# processor reads it directly instead of copying every context variable of the task.
request_context_var: ContextVar[RequestContext | None] = ContextVar("keel_request_context", default=None)


def current_request_id() -> str | None:
    context = request_context_var.get()
    return context.request_id if context is not None else None


def valid_request_id(value: str) -> bool:
    """A caller's request id worth keeping. It is echoed into logs and headers: short and
    printable, so it cannot forge log lines."""
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable()


def note_caller(key_id: str) -> None:
    """Record the key the current request authenticated with (its id, never its secret)."""
    context = request_context_var.get()
    if context is not None:
        context.key_id = key_id
