"""What a caller is told when attributes fail the schema: never the name of one it cannot read,
and nothing about one the whole object holds (its own view lacks it, the object does not)."""

from __future__ import annotations

from keel.service.attributes import _HIDDEN_CONFLICT, AttributePolicy

POLICY = AttributePolicy(
    {
        "type": "object",
        "properties": {
            "nickname": {"type": "string"},
            "crm_id": {"type": "string"},
            "nested": {"type": "object", "required": ["crm_id"]},
        },
        "required": ["crm_id"],
    }
)


def _said(attributes: dict[str, object], hidden: set[str]) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in POLICY.errors(attributes, hidden=frozenset(hidden))]  # type: ignore[arg-type]


def test_a_required_attribute_held_but_hidden_is_not_reported() -> None:
    assert _said({"nickname": 5, "crm_id": "c"}, {"crm_id"}) == [
        ("/attributes/nickname", "must be of type string")
    ]


def test_a_required_attribute_missing_and_hidden_is_not_named() -> None:
    said = _said({"nickname": "n"}, {"crm_id"})
    assert said == [("/attributes", _HIDDEN_CONFLICT)]
    assert "crm_id" not in str(said)


def test_a_rule_inside_the_callers_own_attribute_is_said_as_it_is() -> None:
    said = _said({"crm_id": "c", "nested": {}}, {"crm_id"})
    assert said == [("/attributes/nested", "`crm_id` is required")]


def test_without_hidden_attributes_every_rule_is_named() -> None:
    assert _said({"nickname": "n"}, set()) == [("/attributes", "`crm_id` is required")]


def test_a_name_the_caller_wrote_does_not_tell_whether_a_hidden_attribute_is_held() -> None:
    closed = AttributePolicy(
        {
            "type": "object",
            "properties": {"nickname": {"type": "string"}, "crm_id": {"type": "string"}},
            "additionalProperties": False,
        }
    )
    crafted: dict[str, object] = {"nickname": 5, "x`, `crm_id": 1}

    def said(attributes: dict[str, object]) -> list[tuple[str, str]]:
        errors = closed.errors(attributes, hidden=frozenset({"crm_id"}))  # type: ignore[arg-type]
        return [(e.field, e.message) for e in errors]

    assert said(crafted) == said({**crafted, "crm_id": "c"})
