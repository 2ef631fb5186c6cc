"""The garbage collector while Keel serves: young collections rare enough that requests waiting
on the database are not walked over and over, and the process's settings given back after."""

from __future__ import annotations

import gc

import pytest

from keel.bootstrap.lifecycle import YOUNG_GENERATION_THRESHOLD, collector_tuned_for_serving


def test_serving_raises_the_young_threshold_and_gives_the_old_ones_back() -> None:
    before = gc.get_threshold()
    with collector_tuned_for_serving():
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


def test_the_thresholds_come_back_when_serving_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collector_tuned_for_serving():
        raise RuntimeError("start-up failed")
    assert gc.get_threshold() == before
