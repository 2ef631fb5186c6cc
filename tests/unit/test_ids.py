import pytest

from keel.domain.ids import is_profile_id, new_profile_id, new_ulid, region_of


def test_profile_id_carries_its_region_and_a_ulid() -> None:
    profile_id = new_profile_id("eu1")
    assert profile_id.startswith("eu1_")
    assert len(profile_id) == 4 + 26
    assert is_profile_id(profile_id)
    assert region_of(profile_id) == "eu1"


def test_ids_sort_by_creation_time() -> None:
    earlier = new_ulid(now_ms=1_700_000_000_000)
    later = new_ulid(now_ms=1_700_000_000_001)
    assert earlier < later


def test_ids_are_unique() -> None:
    assert len({new_profile_id("us2") for _ in range(10_000)}) == 10_000


@pytest.mark.parametrize(
    "value", ["", "eu1", "eu1_short", "EU1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J", "eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2I"]
)
def test_malformed_ids_are_rejected(value: str) -> None:
    assert not is_profile_id(value)
    with pytest.raises(ValueError, match="not a profile id"):
        region_of(value)


def test_region_names_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid region"):
        new_profile_id("Europe-1")
