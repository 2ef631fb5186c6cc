import logging

from keel.observability.logging import SampledRecords


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, None, None)


def test_a_flood_of_malformed_requests_is_one_line_per_interval_with_a_count() -> None:
    clock = _Clock()
    sampled = SampledRecords(interval_seconds=1.0, clock=clock)
    passed = [sampled.filter(_record("Invalid HTTP request received.")) for _ in range(500)]
    assert passed.count(True) == 1
    clock.now += 1.0
    later = _record("Invalid HTTP request received.")
    assert sampled.filter(later)
    assert later.getMessage() == "Invalid HTTP request received. (499 more since the last line)"


def test_other_records_are_never_dropped() -> None:
    sampled = SampledRecords(interval_seconds=1.0, clock=_Clock())
    assert all(sampled.filter(_record("Started server process")) for _ in range(10))
