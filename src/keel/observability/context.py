"""Per-request context shared by logs, errors and traces."""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple


class RequestContext(NamedTuple):
    request_id: str
    trace_id: str


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
