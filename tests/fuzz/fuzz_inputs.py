"""Coverage-guided fuzzing (atheris) of what callers send before any use case runs: the profile
document's validation, pagination cursors, entity tags, and the strict JSON reader.

Each target may raise only the refusal it documents (`ValidationFailed`, `MalformedJSON`, or
nothing); anything else is a crash, which is what the issue's findings were (a `RecursionError`
from a long locale, a `ValueError` from `If-Match: "²..."`, a `UnicodeEncodeError` from a forged
cursor). Run by tests/fuzz/test_fuzz.py for a bounded time; by hand:

    python tests/fuzz/fuzz_inputs.py <target> -max_total_time=60 tests/fuzz/corpus/<target>
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from keel.api.http.conditional import etag_matches
    from keel.api.rest.mapping import version_from_etag
    from keel.domain.errors import ValidationFailed
    from keel.domain.profile import JSONValue
    from keel.service.attributes import AttributePolicy
    from keel.service.pagination import Cursors
    from keel.service.profile_input import parse_profile_fields
    from keel.service.strict_json import MalformedJSON, loads_strict

_PROFILE_ID = "eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J"
_CURSORS = Cursors(b"k" * 32)
_POLICY = AttributePolicy(
    {
        "type": "object",
        "maxProperties": 4,
        "properties": {"tier": {"type": "string", "pattern": "^(a+)+$"}, "ssn": {"private": True}},
        "anyOf": [{"required": ["tier"]}, {"maxProperties": 3}],
    }
)


def profile_document(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    document: dict[str, JSONValue] = {
        "handle": provider.ConsumeUnicode(40),
        "emails": [{"address": provider.ConsumeUnicode(60), "primary": True}],
        "locale": provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 4000)),
        "timezone": provider.ConsumeUnicode(40),
        "avatar_url": provider.ConsumeUnicode(80),
        "links": [{"kind": provider.ConsumeUnicode(10), "url": provider.ConsumeUnicode(80)}],
    }
    try:
        document["attributes"] = json.loads(provider.ConsumeUnicode(200))
    except (ValueError, RecursionError):
        document["attributes"] = {"tier": provider.ConsumeUnicode(200)}
    try:
        parse_profile_fields(document, _POLICY, hidden=frozenset({"ssn"}))
    except ValidationFailed as refused:
        for error in refused.errors:
            assert "ssn-value" not in error.message


def _text(data: bytes) -> str:
    """The bytes as a caller's text: UTF-8, lone surrogates included (a JSON escape can make
    one), else Latin-1 (how HTTP header bytes are read)."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def cursor(data: bytes) -> None:
    text = _text(data)
    try:
        after = _CURSORS.decode(text, {"handle": None, "email": None, "ids": None})
    except ValidationFailed:
        return
    raise AssertionError(f"an unsigned input decoded as a cursor: {after!r}")


def entity_tag(data: bytes) -> None:
    text = _text(data)
    version = version_from_etag(_PROFILE_ID, text, ("2026-12-07",))
    assert version is None or version >= 0
    etag_matches(text, '"1.abc"')


def strict_json(data: bytes) -> None:
    with contextlib.suppress(MalformedJSON):
        loads_strict(data)


def entity_tag_before_the_fix(data: bytes) -> None:
    """The negative control: the parser as it was (`isdigit`, then `int`), which the corpus's
    `If-Match` of issue 13 crashes at once; test_fuzz.py checks that this target fails."""
    text = _text(data).strip().strip('"')
    version = text.partition(".")[0]
    if version.isdigit():
        int(version)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "profile_document": profile_document,
    "cursor": cursor,
    "entity_tag": entity_tag,
    "strict_json": strict_json,
    "entity_tag_before_the_fix": entity_tag_before_the_fix,
}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
