"""`ensure_here`: a well-formed id of another region is refused, naming its home region; an id
of this region, or a malformed one (no profile anywhere: a 404 for its caller), passes."""

from __future__ import annotations

import pytest

from keel.domain.errors import Misdirected
from keel.service.residency import ensure_here

HERE = "eu1_01JZ0000000000000000000000"
THERE = "us1_01JZ0000000000000000000000"


def test_another_regions_id_is_refused_with_its_home_region() -> None:
    with pytest.raises(Misdirected) as refused:
        ensure_here([HERE, THERE], "eu1")
    assert refused.value.home_region == "us1"
    assert refused.value.code == "misdirected"


def test_this_regions_ids_and_malformed_ones_pass() -> None:
    ensure_here([HERE, "us1_not-an-id", "", "eu1"], "eu1")
    ensure_here([], "eu1")
