"""structlog JSON logs. Request-scoped fields (request_id, trace_id) come from the request
context variable, so every line written while a request is served carries them without being
passed around."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import structlog

from keel.observability.context import request_context_var

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Keys whose values must never reach a log line, whoever passes them.
_SECRET_KEYS = frozenset({"authorization", "token", "secret", "password", "api_key", "email", "address"})


def _drop_secrets(
    logger: object, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def _add_request_context(
    logger: object, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    context = request_context_var.get()
    if context is not None:
        event_dict.setdefault("request_id", context.request_id)
        event_dict.setdefault("trace_id", context.trace_id)
        if context.key_id is not None:
            event_dict.setdefault("key_id", context.key_id)
    return event_dict


# What uvicorn logs once per malformed request, before any authentication or rate limit: a
# client could write the log a line per request.
_PER_REQUEST_NOISE = frozenset({"Invalid HTTP request received."})


class SampledRecords(logging.Filter):
    """Lets through at most one record of each noisy message per interval, the next one saying
    how many were dropped in between (as `SampledLog` does for Keel's own refusals)."""

    def __init__(
        self,
        messages: frozenset[str] = _PER_REQUEST_NOISE,
        *,
        interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._messages = messages
        self._interval = interval_seconds
        self._clock = clock
        self._next_at: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str) or message not in self._messages:
            return True
        now = self._clock()
        if now < self._next_at.get(message, 0.0):
            self._dropped[message] = self._dropped.get(message, 0) + 1
            return False
        self._next_at[message] = now + self._interval
        dropped = self._dropped.pop(message, 0)
        if dropped:
            record.msg = f"{message} ({dropped} more since the last line)"
        return True


def configure_logging(level: str) -> None:
    """Configure structlog and route the standard library's logging (uvicorn, alembic) to it."""
    numeric = _LEVELS[level]
    shared: list[structlog.types.Processor] = [
        _add_request_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # uvicorn's own access log would duplicate ours and print raw paths with query strings.
    logging.getLogger("uvicorn.access").disabled = True
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, SampledRecords) for f in server_log.filters):
        server_log.addFilter(SampledRecords())
