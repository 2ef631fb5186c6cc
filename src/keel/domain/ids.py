"""Profile identifiers: `<region>_<ULID>`.

The ULID part sorts by creation time (millisecond precision, random tail), so keyset
pagination by id is pagination by age. The region prefix lets any node tell where a profile
lives without a lookup; the format is fixed now so that residency can rely on it later.
"""

from __future__ import annotations

import os
import re
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Matched whole (`fullmatch`): `$` alone would also take a trailing newline.
REGION_PATTERN = re.compile(r"[a-z][a-z0-9]{1,9}")
_PROFILE_ID_PATTERN = re.compile(r"^([a-z][a-z0-9]{1,9})_([0-9A-HJKMNP-TV-Z]{26})$")


def new_ulid(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48-bit millisecond timestamp, 80 random bits, Crockford base32."""
    timestamp = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (timestamp << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_profile_id(region: str) -> str:
    if not REGION_PATTERN.fullmatch(region):
        raise ValueError(f"invalid region name {region!r}")
    return f"{region}_{new_ulid()}"


def is_profile_id(value: str) -> bool:
    return _PROFILE_ID_PATTERN.fullmatch(value) is not None


def region_of(profile_id: str) -> str:
    """The region a profile lives in, read from its id alone."""
    match = _PROFILE_ID_PATTERN.fullmatch(profile_id)
    if match is None:
        raise ValueError("not a profile id")
    return match.group(1)
