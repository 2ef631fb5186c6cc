"""Opaque keyset cursors, signed, and bound to the filters they were issued for.

A cursor is `<payload>.<tag>`: the payload (base64url JSON: the id to continue after and a hash
of the filters) and an HMAC-SHA-256 tag over it. A cursor this service did not issue, or one
issued for other filters, is refused as a `ValidationFailed` on `/cursor` before anything it
carries is used, and what it carries is checked again (a profile id) even when signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os

from keel.domain.errors import FieldError, ValidationFailed
from keel.domain.ids import is_profile_id

# Longer than any cursor this service issues (some 110 characters): nothing longer is decoded.
MAX_CURSOR_LENGTH = 512
_TAG_BYTES = 16
_FOREIGN = "not a cursor this service issued"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))


def _filters_tag(filters: dict[str, str | None]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class Cursors:
    """Issues and reads cursors under one key. Every process that may be asked to continue a
    listing must hold the same key (see `KEEL_CURSOR_SECRET`)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def _tag(self, payload: str) -> str:
        return _b64encode(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:_TAG_BYTES])

    def encode(self, after_id: str, filters: dict[str, str | None]) -> str:
        raw = json.dumps({"a": after_id, "f": _filters_tag(filters)}, separators=(",", ":"))
        payload = _b64encode(raw.encode())
        return f"{payload}.{self._tag(payload)}"

    def decode(self, cursor: str, filters: dict[str, str | None]) -> str:
        """The id to continue after. Raises `ValidationFailed` for a foreign, forged or damaged
        cursor, or one issued for other filters."""
        payload, dot, tag = cursor.partition(".")
        if len(cursor) > MAX_CURSOR_LENGTH or not dot or not cursor.isascii():
            raise _invalid(_FOREIGN)
        # Constant time: the tag must not be guessable byte by byte from response times.
        if not hmac.compare_digest(tag, self._tag(payload)):
            raise _invalid(_FOREIGN)
        try:
            data = json.loads(_b64decode(payload))
            after_id = data["a"]
            filters_tag = data["f"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _invalid(_FOREIGN) from None
        if not isinstance(after_id, str) or not is_profile_id(after_id):
            raise _invalid(_FOREIGN)
        if filters_tag != _filters_tag(filters):
            raise _invalid("cursor belongs to a different query")
        return after_id


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed([FieldError("/cursor", message)])
