"""Per-request context shared by logs, errors and traces."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("keel_request_id", default=None)
