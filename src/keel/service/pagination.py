"""Opaque keyset cursors. A cursor is bound to the filters it was issued for."""

from __future__ import annotations

import base64
import hashlib
import json

from keel.domain.errors import FieldError, ValidationFailed


def _filters_tag(filters: dict[str, str | None]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def encode_cursor(after_id: str, filters: dict[str, str | None]) -> str:
    raw = json.dumps({"a": after_id, "f": _filters_tag(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, filters: dict[str, str | None]) -> str:
    """The id to continue after. Raises `ValidationFailed` for a foreign or damaged cursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after_id = data["a"]
        tag = data["f"]
    except (ValueError, KeyError, TypeError):
        raise ValidationFailed([FieldError("/cursor", "not a cursor this service issued")]) from None
    if not isinstance(after_id, str) or tag != _filters_tag(filters):
        raise ValidationFailed([FieldError("/cursor", "cursor belongs to a different query")])
    return after_id
