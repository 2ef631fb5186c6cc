from pathlib import Path

import pytest

from keel.domain.errors import ValidationFailed
from keel.domain.profile import JSONValue
from keel.service.attributes import AttributePolicy
from keel.service.profile_input import fields_document, parse_profile_fields

DEFAULT = AttributePolicy()


def _doc(**overrides: JSONValue) -> dict[str, JSONValue]:
    document: dict[str, JSONValue] = {
        "handle": "ada_l",
        "emails": [{"address": "ada@example.com", "primary": True}],
    }
    document.update(overrides)
    return document


def _fields_in_error(document: JSONValue, policy: AttributePolicy = DEFAULT) -> set[str]:
    with pytest.raises(ValidationFailed) as caught:
        parse_profile_fields(document, policy)
    return {error.field for error in caught.value.errors}


def test_a_minimal_profile_is_valid_and_normalized() -> None:
    fields = parse_profile_fields(_doc(handle=" Ada_L ", locale="en-gb", timezone="Europe/London"), DEFAULT)
    assert fields.handle == "ada_l"
    assert fields.locale == "en-GB"
    assert fields.emails[0].primary
    assert fields.emails[0].verified is False


@pytest.mark.parametrize("handle", ["ab", "a" * 31, "ada-l", "adä", "", 7])
def test_bad_handles_are_rejected(handle: JSONValue) -> None:
    assert _fields_in_error(_doc(handle=handle)) == {"/handle"}


def test_exactly_one_primary_email() -> None:
    two: JSONValue = [
        {"address": "a@example.com", "primary": True},
        {"address": "b@example.com", "primary": True},
    ]
    assert _fields_in_error(_doc(emails=two)) == {"/emails"}
    none: JSONValue = [{"address": "a@example.com"}]
    assert _fields_in_error(_doc(emails=none)) == {"/emails"}
    assert _fields_in_error(_doc(emails=[])) == {"/emails"}


def test_emails_are_validated_and_unique_case_insensitively() -> None:
    assert _fields_in_error(_doc(emails=[{"address": "not-an-email", "primary": True}])) == {
        "/emails/0/address"
    }
    twice: JSONValue = [{"address": "a@example.com", "primary": True}, {"address": "A@Example.com"}]
    assert "/emails/1/address" in _fields_in_error(_doc(emails=twice))


def test_optional_fields_are_checked() -> None:
    errors = _fields_in_error(
        _doc(
            avatar_url="http://example.com/a.png",
            locale="not a locale",
            timezone="Mars/Olympus",
            bio="x" * 1001,
            links=[{"kind": "site", "url": "javascript:alert(1)"}],
        )
    )
    assert errors == {"/avatar_url", "/locale", "/timezone", "/bio", "/links/0/url"}


def test_every_error_is_reported_at_once() -> None:
    errors = _fields_in_error({"handle": "x", "emails": "nope", "colour": "blue"})
    assert errors == {"/handle", "/emails", "/colour"}


def test_unknown_nested_fields_are_rejected() -> None:
    errors = _fields_in_error(_doc(emails=[{"address": "a@example.com", "primary": True, "note": 1}]))
    assert errors == {"/emails/0/note"}


def test_default_attribute_rules() -> None:
    assert parse_profile_fields(_doc(attributes={"plan": "pro", "score": 3}), DEFAULT).attributes == {
        "plan": "pro",
        "score": 3,
    }
    assert _fields_in_error(_doc(attributes={"nested": {"a": 1}})) == {"/attributes/nested"}
    too_many: JSONValue = {f"k{i}": i for i in range(51)}
    assert _fields_in_error(_doc(attributes=too_many)) == {"/attributes"}


def test_schema_attribute_rules_and_private_attributes() -> None:
    policy = AttributePolicy(
        {
            "type": "object",
            "properties": {
                "plan": {"enum": ["free", "pro"]},
                "risk_score": {"type": "number", "private": True},
            },
            "additionalProperties": False,
        }
    )
    assert policy.private_names == {"risk_score"}
    assert _fields_in_error(_doc(attributes={"plan": "gold"}), policy) == {"/attributes/plan"}
    assert _fields_in_error(_doc(attributes={"other": 1}), policy) == {"/attributes"}
    fields = parse_profile_fields(_doc(attributes={"plan": "pro", "risk_score": 0.3}), policy)
    assert policy.visible(fields.attributes, admin=False) == {"plan": "pro"}
    assert policy.visible(fields.attributes, admin=True) == {"plan": "pro", "risk_score": 0.3}


def test_an_invalid_schema_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text('{"type": "no-such-type"}')
    with pytest.raises(ValueError, match="not valid JSON Schema"):
        AttributePolicy.from_file(path)


def test_document_round_trip() -> None:
    fields = parse_profile_fields(
        _doc(display_name="Ada", links=[{"kind": "site", "url": "https://ada.dev"}]), DEFAULT
    )
    assert parse_profile_fields(fields_document(fields), DEFAULT) == fields


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("https://a。com/x", "https://a.com/x"),
        ("HTTPS://Example.COM/Path?q=1#f", "https://example.com/Path?q=1#f"),
        ("https://bücher.example/ü", "https://xn--bcher-kva.example/ü"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_urls_are_stored_in_one_form(sent: str, stored: str) -> None:
    assert parse_profile_fields(_doc(avatar_url=sent), DEFAULT).avatar_url == stored


@pytest.mark.parametrize(
    "url",
    [
        "https://a.com:99999999999999999999/",
        "https://xn--a.com",
        "https://999999999999999999999",
        "https://user:password@example.com/",
        "https://-a.com/",
    ],
)
def test_urls_that_name_no_host_a_browser_would_visit_are_refused(url: str) -> None:
    assert _fields_in_error(_doc(links=[{"kind": "x", "url": url}])) == {"/links/0/url"}


def test_a_link_without_a_url_is_refused() -> None:
    assert _fields_in_error(_doc(links=[{"kind": "x"}])) == {"/links/0/url"}
