"""The strict JSON reader and the body media-type rule, on their own."""

from __future__ import annotations

import math

import pytest

from keel.api.media_types import JSON, MERGE_PATCH_JSON, accepts
from keel.service.strict_json import MalformedJSON, loads_strict


def test_reads_json_as_json_loads_does_nan_included() -> None:
    value = loads_strict(b'{"a": [1, {"b": null}], "c": "caf\xc3\xa9", "d": NaN}')
    assert value["a"] == [1, {"b": None}]
    assert value["c"] == "caf\u00e9"
    assert math.isnan(value["d"])  # refused by the use cases, with a field error
    assert loads_strict('{"a": 1}') == {"a": 1}
    assert loads_strict('{"a": {"x": 1}, "b": {"x": 2}}') == {"a": {"x": 1}, "b": {"x": 2}}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"a": 1, "a": 2}', 'key "a" appears twice'),
        ('[{"k": {"deep": 1, "deep": 1}}]', 'key "deep" appears twice'),
        ('{"a": 1, "a": 1}'.encode("utf-16"), "UTF-8"),
        ('{"a": 1}'.encode("utf-32-be"), "UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        ("\ufeff{}", "byte order mark"),
        (b'{"a": "\xe9"}', "not valid UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b"", "not valid JSON"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_refuses_with_a_reason(data: bytes | str, says: str) -> None:
    with pytest.raises(MalformedJSON, match=says):
        loads_strict(data)


def test_a_long_duplicated_key_is_quoted_short() -> None:
    key = "k" * 10_000
    with pytest.raises(MalformedJSON) as refused:
        loads_strict(f'{{"{key}": 1, "{key}": 2}}')
    assert len(refused.value.detail) < 200


@pytest.mark.parametrize(
    ("header", "expected", "accepted"),
    [
        ("application/json", JSON, True),
        ("APPLICATION/JSON ; charset=UTF-8", JSON, True),
        ('application/json; charset="utf-8"', JSON, True),
        ("application/merge-patch+json", MERGE_PATCH_JSON, True),
        ("application/merge-patch+json", JSON, False),
        ("application/json", MERGE_PATCH_JSON, False),
        ("application/x-foo+json", JSON, False),
        ("text/plain", JSON, False),
        ("application/json; charset=latin-1", JSON, False),
        ("application/json; charset=utf-8; charset=utf-8", JSON, False),
        ("application/json; boundary=x", JSON, False),
        ("application/json;", JSON, False),
        ("", JSON, False),
        (None, JSON, False),
    ],
)
def test_body_media_types(header: str | None, expected: str, accepted: bool) -> None:
    assert accepts(header, expected) is accepted
