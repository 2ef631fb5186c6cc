"""The one JSON reader for what callers send, on every protocol (REST bodies, GraphQL bodies and
query parameters, gRPC's `attributes_json`).

Python's `json.loads` is lenient where a service must not be: it keeps the last of duplicated
object keys (so two parsers in a chain, a proxy's and ours, can disagree on what a document
says), and given bytes it guesses UTF-16 or UTF-32 and skips a byte order mark. RFC 8259 asks for
UTF-8 without a BOM between systems, and names with duplicates are an interoperability hazard
(RFC 8259 §4, RFC 7493 I-JSON §2.3): both are refused here, with a message a caller can act on.

NaN and Infinity still parse (the use cases refuse them with a field error, where it can be
located); nesting is bounded by the callers (`MAX_NESTING`), the decoder's own recursion limit
is reported as too deep.
"""

from __future__ import annotations

import json
from typing import Any

# Keys quoted in error messages are cut: the message must stay small whatever was sent.
_QUOTED_KEY_LIMIT = 64
_BOM = b"\xef\xbb\xbf"


class MalformedJSON(ValueError):
    """The text is not JSON this service accepts; `detail` says why, in words for the caller."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


_decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)


def quoted_key(key: str) -> str:
    """A key as JSON text for a message, cut to a bounded length."""
    quoted = json.dumps(key)
    if len(quoted) > _QUOTED_KEY_LIMIT:
        quoted = quoted[: _QUOTED_KEY_LIMIT - 4] + '..."'
    return quoted


def loads_strict(data: bytes | str) -> Any:
    """Parse `data` as one JSON value: UTF-8 (no BOM, no UTF-16/32) when given bytes, no object
    with the same key twice. Raises `MalformedJSON` otherwise."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if raw.startswith(_BOM):
            raise MalformedJSON("JSON must be UTF-8 without a byte order mark.")
        if b"\x00" in raw:
            # Never in UTF-8 JSON (control characters must be escaped), always in UTF-16/32.
            raise MalformedJSON("JSON must be UTF-8; UTF-16 and UTF-32 are not accepted.")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedJSON("JSON must be UTF-8; the body is not valid UTF-8.") from None
    else:
        text = data
        if text.startswith("\ufeff"):
            raise MalformedJSON("JSON must not start with a byte order mark.")
    try:
        return _decoder.decode(text)
    except _DuplicateKey as duplicate:
        raise MalformedJSON(
            f"The key {quoted_key(duplicate.key)} appears twice in one JSON object; "
            "names within an object must be unique."
        ) from None
    except RecursionError:
        raise MalformedJSON("The JSON is nested too deeply.") from None
    except ValueError as error:  # json.JSONDecodeError
        position = f" (at character {error.pos})" if isinstance(error, json.JSONDecodeError) else ""
        raise MalformedJSON(f"The text is not valid JSON{position}.") from None
