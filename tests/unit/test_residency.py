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


def test_a_create_may_name_this_region_only() -> None:
    from keel.domain.errors import ValidationFailed
    from keel.domain.profile import JSONValue
    from keel.service.residency import create_here

    document: JSONValue = {"handle": "ada", "region": "eu1"}
    assert create_here(document, "eu1") == {"handle": "ada"}
    assert document == {"handle": "ada", "region": "eu1"}  # the caller's document is left alone
    assert create_here({"handle": "ada"}, "eu1") == {"handle": "ada"}
    assert create_here({"handle": "ada", "region": None}, "eu1") == {"handle": "ada"}
    assert create_here(["not", "an", "object"], "eu1") == ["not", "an", "object"]  # the parser's to refuse
    with pytest.raises(Misdirected) as refused:
        create_here({"handle": "ada", "region": "us1"}, "eu1")
    assert refused.value.home_region == "us1"
    for bad in ("EU1", "e", 1, "eu1_x", "eu1\n", ""):
        with pytest.raises(ValidationFailed):
            create_here({"handle": "ada", "region": bad}, "eu1")
