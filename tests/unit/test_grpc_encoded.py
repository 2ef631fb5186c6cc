"""Answers assembled from encoded profiles are exactly what building the messages gives."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from keel.api.grpc.server.encoded import Encoded, EncodedProfiles, length_delimited, passing_encoded
from keel.api.grpc.wire.messages import profile_message
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.domain.profile import Email, JSONValue, Link, Profile, ProfileFields

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _profile(number: int, **attributes: JSONValue) -> Profile:
    return Profile(
        id=f"eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H{number:02d}",
        fields=ProfileFields(
            handle=f"user_{number}",
            emails=(Email(f"u{number}@example.com", primary=True),),
            links=(Link("website", f"https://example.com/{number}"),),
            display_name="Ünïcode ✓" if number % 2 else None,
            attributes=dict(attributes),
        ),
        version=number,
        created_at=NOW,
        updated_at=NOW,
    )


def test_an_assembled_batch_decodes_to_the_built_one() -> None:
    profiles = [_profile(n, level=n) for n in range(1, 40)]
    encoded = EncodedProfiles(max_entries=100)
    missing = ["eu1_nope", "ünïcode-id"]
    data = b"".join(encoded.entry(1, p, False) for p in profiles)
    data += b"".join(length_delimited(2, i.encode()) for i in missing)
    built = pb.BatchGetProfilesResponse(profiles=[profile_message(p) for p in profiles], missing_ids=missing)
    assert pb.BatchGetProfilesResponse.FromString(data) == built
    # Long entries need multi-byte lengths: a profile of a few hundred bytes.
    big = _profile(50, text="x" * 300)
    assert pb.ListProfilesResponse.FromString(encoded.entry(1, big, True)).profiles[0] == profile_message(big)


def test_entries_are_per_version_and_view() -> None:
    encoded = EncodedProfiles(max_entries=2)
    first = _profile(1, secret="for admins")
    public = replace(first, fields=replace(first.fields, attributes={}))
    assert encoded.entry(1, first, True) != encoded.entry(1, public, False)  # same id and version
    newer = replace(public, version=2, fields=replace(public.fields, handle="renamed"))
    assert pb.ListProfilesResponse.FromString(encoded.entry(1, newer, False)).profiles[0].handle == "renamed"
    # Bounded: the least recently used entry went out; a lookup encodes it again, correctly.
    assert pb.ListProfilesResponse.FromString(encoded.entry(1, first, True)).profiles[0] == profile_message(
        first
    )


def test_the_serializer_sends_encoded_answers_as_they_are() -> None:
    serialize = passing_encoded(pb.DeleteProfileResponse.SerializeToString)
    assert serialize(Encoded(b"\x0a\x00")) == b"\x0a\x00"
    assert serialize(pb.DeleteProfileResponse()) == b""


def test_without_room_every_answer_is_encoded_anew() -> None:
    encoded = EncodedProfiles(max_entries=0)
    first = _profile(1)
    assert encoded.entry(1, first, False) == encoded.entry(1, first, False)
    assert len(encoded._entries) == 0
