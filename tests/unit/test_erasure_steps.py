"""The erasure saga's next step, from what its record says is done."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from keel.domain.erasure import Erasure, ErasureState, ErasureStep

T = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NEW = Erasure("era_1", "eu1_p", "admin", T, T, ErasureState.RUNNING, T)


def test_the_next_step_is_the_first_not_done() -> None:
    assert NEW.next_step is ErasureStep.REMOVE_PERSONAL_DATA
    removed = replace(NEW, data_removed_at=T, caches_dropped_at=T)
    assert removed.next_step is ErasureStep.ERASE_STREAM_COPIES
    assert replace(removed, stream_copies_erased_at=T).next_step is ErasureStep.PUBLISH_ERASED_EVENT


def test_a_saga_completed_before_a_step_was_added_has_no_next_step() -> None:
    # Completed by a Keel without `erase_stream_copies` (before migration 0007): that step stays
    # not done in its status, and nothing is left to run.
    old = replace(
        NEW,
        state=ErasureState.COMPLETED,
        data_removed_at=T,
        caches_dropped_at=T,
        event_written_at=T,
        acknowledged_at=T,
        finished_at=T,
    )
    assert old.done_at(ErasureStep.ERASE_STREAM_COPIES) is None
    assert old.next_step is None
    # A failed one resumes where it stopped, that step included.
    failed = replace(old, state=ErasureState.FAILED, acknowledged_at=None, finished_at=None)
    assert failed.next_step is ErasureStep.ERASE_STREAM_COPIES
