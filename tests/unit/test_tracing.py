from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from keel.observability.tracing import PropagatingTracer


def test_a_new_trace_gets_fresh_ids_and_records_nothing() -> None:
    tracer = PropagatingTracer()
    first, second = tracer.start_span("a"), tracer.start_span("b")
    assert not first.is_recording()
    assert first.get_span_context().is_valid
    assert first.get_span_context().trace_id != second.get_span_context().trace_id


def test_a_callers_trace_is_continued() -> None:
    parent = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    child = PropagatingTracer().start_span("child", context=context).get_span_context()
    assert child.trace_id == parent.trace_id
    assert child.span_id != parent.span_id
    assert child.trace_flags.sampled


def test_start_as_current_span_sets_the_current_span() -> None:
    with PropagatingTracer().start_as_current_span("outer") as span:
        assert trace.get_current_span() is span
