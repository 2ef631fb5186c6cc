"""Database call instrumentation shared by the storage adapters: a span and a histogram sample
per call, without allocating a generator per call on the hot path."""

from __future__ import annotations

import time
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from prometheus_client import Histogram

from keel.observability.metrics import Metrics


class DatabaseObserver:
    def __init__(self, metrics: Metrics, tracer: Tracer, system: str) -> None:
        self.metrics = metrics
        self._tracer = tracer
        self._system = system
        # The histogram's children by (operation, outcome), kept: a label lookup costs a lock
        # and a tuple hash on every call, and the combinations are few.
        self._durations: dict[tuple[str, str], Histogram] = {}

    def call(self, operation: str) -> _ObservedCall:
        return _ObservedCall(self, operation)

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        child = self._durations.get((operation, outcome))
        if child is None:
            child = self._durations[(operation, outcome)] = self.metrics.db_query_duration.labels(
                operation, outcome
            )
        child.observe(seconds)


class _ObservedCall:
    __slots__ = ("_observer", "_operation", "_span", "_started")

    def __init__(self, observer: DatabaseObserver, operation: str) -> None:
        self._observer = observer
        self._operation = operation

    def __enter__(self) -> Span:
        # A child span only where the request is traced: most are not (sampling), and an
        # unsampled span costs an id, a sampler call and an object for nothing.
        if trace.get_current_span().is_recording():
            self._span = self._observer._tracer.start_span(
                f"db {self._operation}",
                kind=SpanKind.CLIENT,
                attributes={
                    # `db.system` as well: the name before OpenTelemetry's database conventions 1.26.
                    "db.system.name": self._observer._system,
                    "db.system": self._observer._system,
                    "db.operation.name": self._operation,
                },
            )
        else:
            self._span = trace.INVALID_SPAN
        self._started = time.perf_counter()
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        outcome = "ok" if exc_type is None else "error"
        self._observer.observe(self._operation, outcome, elapsed)
        if self._span.is_recording():
            if exc is not None:
                self._span.record_exception(exc)
            self._span.end()
