"""Erasure of a profile's personal data, as a saga: its steps, its state, and the tombstone a
profile leaves behind. Each step's completion is a timestamp recorded in the database in the
same transaction as the step's effect (where the step has one), so a saga resumes at the first
step without a timestamp, whatever stopped it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ErasureState(StrEnum):
    RUNNING = "running"  # steps remain; a runner takes it up at `next_attempt_at`
    COMPLETED = "completed"
    FAILED = "failed"  # gave up at `give_up_at`: the status says what was and was not done


class ErasureStep(StrEnum):
    """The steps in their order."""

    REMOVE_PERSONAL_DATA = "remove_personal_data"
    DROP_CACHED_COPIES = "drop_cached_copies"
    ERASE_STREAM_COPIES = "erase_stream_copies"
    PUBLISH_ERASED_EVENT = "publish_erased_event"
    AWAIT_ACKNOWLEDGEMENTS = "await_acknowledgements"
    FINISH = "finish"


class TombstoneCause(StrEnum):
    ERASURE = "erasure"  # an admin asked for it
    PURGE = "purge"  # soft-deleted longer than the retention period


@dataclass(frozen=True, slots=True)
class Tombstone:
    """All Keel keeps of a profile whose personal data is gone: its id and when it went."""

    profile_id: str
    removed_at: datetime
    cause: TombstoneCause
    last_version: int  # the profile's version when its data went; an erased event follows it


_ERASURE_ID = re.compile(r"era_[0-9a-f]{32}")


def new_erasure_id() -> str:
    return f"era_{uuid.uuid4().hex}"


def is_erasure_id(value: str) -> bool:
    """Whether `value` has the shape of an erasure id (anything else names no erasure)."""
    return _ERASURE_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Erasure:
    id: str
    profile_id: str
    requested_by: str  # the key id of the admin who asked
    requested_at: datetime
    give_up_at: datetime  # past it, a step still failing (or a holder still silent) fails the saga
    state: ErasureState
    next_attempt_at: datetime
    attempts: int = 0  # failed attempts of the current step, for the backoff
    last_error: str | None = None
    data_removed_at: datetime | None = None
    erased_version: int | None = None  # the version the erased event carries
    caches_dropped_at: datetime | None = None
    event_id: str | None = None
    event_written_at: datetime | None = None
    holders_recorded_at: datetime | None = None
    acknowledged_at: datetime | None = None
    finished_at: datetime | None = None
    stream_copies_erased_at: datetime | None = None

    def done_at(self, step: ErasureStep) -> datetime | None:
        return {
            ErasureStep.REMOVE_PERSONAL_DATA: self.data_removed_at,
            ErasureStep.DROP_CACHED_COPIES: self.caches_dropped_at,
            ErasureStep.ERASE_STREAM_COPIES: self.stream_copies_erased_at,
            ErasureStep.PUBLISH_ERASED_EVENT: self.event_written_at,
            ErasureStep.AWAIT_ACKNOWLEDGEMENTS: self.acknowledged_at,
            ErasureStep.FINISH: self.finished_at,
        }[step]

    @property
    def next_step(self) -> ErasureStep | None:
        """The first step not done, None when all are or the saga completed (one completed
        before a step was added, `erase_stream_copies` in 0007, shows that step not done)."""
        if self.state is ErasureState.COMPLETED:
            return None
        return next((step for step in ErasureStep if self.done_at(step) is None), None)


# The idempotency outcome that replaces a stored profile snapshot when the profile is erased: a
# retry of the request that created it learns the profile is gone, and nothing of it.
ERASED_OUTCOME_KEY = "erased_profile"


def erased_outcome(profile_id: str, at: datetime) -> dict[str, str]:
    return {ERASED_OUTCOME_KEY: profile_id, "erased_at": at.isoformat(timespec="microseconds")}


def is_erased_outcome(outcome: str) -> bool:
    # Cheap test first: stored outcomes are profile snapshots, never starting like this.
    return outcome.startswith('{"' + ERASED_OUTCOME_KEY + '"')
