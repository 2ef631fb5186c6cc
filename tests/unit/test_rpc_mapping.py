"""The gRPC mapping: domain errors survive the wire whole, and merge patches come back exactly
from a partial message and its field mask."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.api.grpc.wire.messages import (
    document_from_message,
    document_message,
    patch_from_message,
    patch_message,
    profile_from_message,
    profile_message,
)
from keel.api.grpc.wire.status import (
    STATUS_DETAILS_KEY,
    CoreUnreachable,
    EdgeRejected,
    from_status,
    to_status,
)
from keel.domain.errors import (
    CapacityReduced,
    ConcurrentModification,
    Conflict,
    DeadlineExceeded,
    FieldError,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KeelError,
    Misdirected,
    NotFound,
    OutcomeUnknown,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
)
from keel.domain.profile import Email, JSONObject, JSONValue, Link, Profile, ProfileFields

ERRORS: list[tuple[KeelError, grpc.StatusCode]] = [
    (
        ValidationFailed([FieldError("/handle", "required, a string")], "bad"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (NotFound("No such profile."), grpc.StatusCode.NOT_FOUND),
    (Conflict("Handle taken.", "/handle"), grpc.StatusCode.ALREADY_EXISTS),
    (VersionMismatch("At 3.", current_version=3), grpc.StatusCode.FAILED_PRECONDITION),
    (VersionMismatch("No version.", current_version=None), grpc.StatusCode.FAILED_PRECONDITION),
    (ConcurrentModification("Busy."), grpc.StatusCode.ABORTED),
    (IdempotencyKeyReused("Other body."), grpc.StatusCode.FAILED_PRECONDITION),
    (IdempotencyInProgress("In progress."), grpc.StatusCode.ABORTED),
    (Unauthenticated("No key."), grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden("No scope."), grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable("Database down.", retry_after=2.5), grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded("Too slow.", retry_after=1.0), grpc.StatusCode.DEADLINE_EXCEEDED),
    (CapacityReduced("Shedding.", retry_after=2.0), grpc.StatusCode.UNAVAILABLE),
    (
        QuotaExceeded("Spent.", retry_after=30.0, violated_policies=("burst",)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    (OutcomeUnknown("No answer.", retry_after=1.0), grpc.StatusCode.UNAVAILABLE),
    (EdgeRejected("Edge key revoked.", retry_after=1.0), grpc.StatusCode.UNAUTHENTICATED),
    (Misdirected("Lives in us1.", "us1"), grpc.StatusCode.FAILED_PRECONDITION),
]


@pytest.mark.parametrize(
    ("error", "code"), ERRORS, ids=lambda e: type(e).__name__ if isinstance(e, KeelError) else ""
)
def test_every_domain_error_crosses_the_wire_whole(error: KeelError, code: grpc.StatusCode) -> None:
    status_code, status = to_status(error)
    assert status_code is code
    back = from_status(status_code, status.message, ((STATUS_DETAILS_KEY, status.SerializeToString()),))
    assert type(back) is type(error)
    assert vars(back) == vars(error)
    assert back.detail == error.detail


def test_errors_stay_within_the_trailer_limits() -> None:
    many = ValidationFailed(
        [FieldError(f"/attributes/k{i}", "must be a scalar") for i in range(5000)], "x" * 10_000
    )
    _, status = to_status(many)
    assert len(status.SerializeToString()) < 256 * 1024
    back = from_status(
        grpc.StatusCode.INVALID_ARGUMENT, status.message, ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    )
    assert isinstance(back, ValidationFailed)
    assert len(back.errors) == 1001  # the first thousand, then how many more
    assert back.errors[-1].message == "and 4000 more errors"


def test_a_status_without_keel_details_is_the_transport_failing() -> None:
    assert isinstance(from_status(grpc.StatusCode.UNAVAILABLE, "connect failed", ()), CoreUnreachable)
    assert isinstance(from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "", ()), DeadlineExceeded)
    internal = from_status(grpc.StatusCode.INTERNAL, "boom", ((STATUS_DETAILS_KEY, b"\xff garbage"),))
    assert type(internal) is Unavailable  # never a bare failure: a 503 at the edge


def test_profiles_cross_the_wire_exactly() -> None:
    moment = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
    profile = Profile(
        id="eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J",
        fields=ProfileFields(
            handle="ada_l",
            emails=(Email("ada@example.com", verified=True, primary=True), Email("a@b.co")),
            display_name="Ada",
            locale="en-GB",
            links=(Link("website", "https://ada.example"),),
            attributes={"n": 12345678901234567890, "f": 0.5, "nested": {"list": [1, None, "x"]}},
        ),
        version=7,
        created_at=moment,
        updated_at=moment,
    )
    assert profile_from_message(profile_message(profile)) == profile


def test_create_documents_cross_the_wire() -> None:
    document: JSONObject = {
        "handle": "ada_l",
        "emails": [{"address": "ada@example.com", "verified": False, "primary": True}],
        "bio": "",
        "links": [],
        "attributes": {"plan": "pro"},
    }
    assert document_from_message(document_message(document)) == document


def test_optional_fields_sent_as_null_are_left_unset() -> None:
    document: JSONObject = {
        "handle": "ada_l",
        "emails": [{"address": "a@b.co", "primary": True}],
        "bio": None,
        "locale": None,
    }
    message = document_message(document)
    assert not message.HasField("bio")
    assert "bio" not in document_from_message(message)


def test_values_a_typed_message_cannot_carry_are_refused_as_the_use_case_would() -> None:
    with pytest.raises(ValidationFailed) as refused:
        patch_message("id", {"handle": 5, "bio": "fine"})
    assert refused.value.errors == [FieldError("/handle", "required, a string")]
    with pytest.raises(ValidationFailed) as unstorable:
        patch_message("id", {"attributes": {"x": float("nan")}, "bio": "a\x00b"})
    assert {e.field for e in unstorable.value.errors} == {"/attributes/x", "/bio"}
    with pytest.raises(ValidationFailed) as unknown:
        document_message({"handle": "ada_l", "emails": [], "colour": "red"})
    assert FieldError("/colour", "unknown field") in unknown.value.errors


# Text a profile can store: no NUL, no lone surrogates (those are refused before the wire).
text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=6)
json_leaf: st.SearchStrategy[JSONValue] = st.none() | st.booleans() | st.integers() | text
json_value: st.SearchStrategy[JSONValue] = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=8,
)
patches: st.SearchStrategy[JSONObject] = st.fixed_dictionaries(
    {},
    optional={
        "handle": text,
        "display_name": st.none() | text,
        "locale": st.none() | st.just("en-GB"),
        "attributes": st.none() | st.dictionaries(text, json_value, max_size=4),
    },
)


@given(patches)
def test_a_merge_patch_comes_back_exactly_from_message_and_mask(patch: JSONObject) -> None:
    message, mask = patch_message("eu1_x", patch)
    assert patch_from_message(message, mask) == patch


def test_mask_paths_quote_names_that_are_not_plain() -> None:
    message, mask = patch_message("id", {"attributes": {"a.b": 1, "c`d": {"e": None}}})
    assert list(mask.paths) == ["attributes.`a.b`", "attributes.`c``d`.e"]
    assert patch_from_message(message, mask) == {"attributes": {"a.b": 1, "c`d": {"e": None}}}
    message, mask = patch_message("id", {"attributes": {"": {"": 1}}})
    assert list(mask.paths) == ["attributes.``.``"]
    assert patch_from_message(message, mask) == {"attributes": {"": {"": 1}}}
