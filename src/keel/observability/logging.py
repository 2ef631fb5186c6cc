"""structlog JSON logs. Request-scoped fields (request_id, trace_id) come from the request
context variable, so every line written while a request is served carries them without being
passed around."""

from __future__ import annotations

import logging
import sys

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
