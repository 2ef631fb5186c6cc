"""Profiles kept encoded, so batch answers are assembled rather than built.

A profile's content never changes under the same version (every change makes a new one), so
its Protocol Buffers encoding can be kept and reused. An encoded message is the concatenation of
its encoded fields, and a repeated message field is one length-delimited entry per element: an
answer of 100 profiles is then 100 cached byte strings joined, with no per-field work in Python.
A servicer returns `Encoded` bytes and the interceptor hands them to gRPC as they are
(`passing_encoded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.api.grpc.wire.messages import fill_profile_message
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.domain.profile import Profile
from keel.support.lru import BoundedLRU


class Encoded:
    """An answer already in its wire form."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def passing_encoded(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """A response serializer that sends `Encoded` answers as they are."""

    def serialize(response: Any) -> bytes:
        if isinstance(response, Encoded):
            return response.data
        assert serializer is not None
        return serializer(response)

    return serialize


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (a string, bytes or a message) in wire format."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


class EncodedProfiles:
    """Encoded profile entries by (id, version, view), least recently used out first. The view
    matters: an admin sees private attributes that others do not."""

    def __init__(self, max_entries: int) -> None:
        self._entries: BoundedLRU[tuple[str, int, bool], bytes] = BoundedLRU(max_entries)

    def entry(self, field_number: int, profile: Profile, full_view: bool) -> bytes:
        """`profile` as one entry of the repeated message field `field_number`."""
        key = (profile.id, profile.version, full_view)
        encoded = self._entries.get(key)
        if encoded is None:
            message = pb.Profile()
            fill_profile_message(message, profile)
            encoded = message.SerializeToString()
            self._entries.put(key, encoded)
        return length_delimited(field_number, encoded)
