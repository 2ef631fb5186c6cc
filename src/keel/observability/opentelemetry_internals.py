"""Every place Keel reaches into OpenTelemetry's internals, and why; nothing else in Keel does.

`PropagatingTracer` (keel.observability.tracing) implements the API's `Tracer` so that, with no
exporter, trace context is continued without recording spans. Its `start_as_current_span` must
be usable both as a context manager and as a decorator, as the API's own is: that takes the
API's private `_agnosticcontextmanager`, and its signature names the private `_Links` type.

OpenTelemetry is pinned (requirements.lock); `tests/unit/test_framework_contracts.py` fails
loudly when an upgrade moves either. Decision record: docs/decisions/0001-framework-internals.md.
"""

from __future__ import annotations

from opentelemetry.trace import _Links as Links
from opentelemetry.util._decorator import _agnosticcontextmanager as agnostic_context_manager

__all__ = ["Links", "agnostic_context_manager"]
