"""Custom attributes: validated by an operator-supplied JSON Schema, or by a default rule.

A property of the schema's top-level `properties` may carry `"private": true`; such attributes
are returned only to admin callers and written only by them.

Two promises hold whatever the schema says:
- An error message is built from the schema keyword that failed and the location, never from
  the instance: jsonschema's own messages print whole instances (`{...} has too many
  properties`), which would show a caller the private attributes validated beside theirs.
- No pattern can backtrack: `pattern` and `patternProperties` run on RE2 (linear time), and a
  schema whose patterns RE2 cannot compile (back-references, look-around) is refused at start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import re2
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import SchemaError
from jsonschema.validators import extend

from keel.domain.errors import FieldError
from keel.domain.profile import JSONObject

DEFAULT_MAX_KEYS = 50
_MAX_KEY_LENGTH = 64
_MAX_STRING_LENGTH = 1000
# Schema values quoted in a message (an enum's members, a const) are cut beyond this.
_MAX_QUOTED = 200
_HIDDEN_MESSAGE = "a private attribute does not meet the schema; an admin key can correct it"
_HIDDEN_CONFLICT = (
    "the change breaks a schema rule that involves attributes this key cannot read; an admin key can make it"
)


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported as SchemaError, not on stderr
    return options


_OPTIONS = _re2_options()


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError("does not match the pattern")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _compiled(pattern).search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _extra_names(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = [_compiled(p) for p in schema.get("patternProperties", {})]
    return [
        name
        for name in instance
        if name not in properties and not any(pattern.search(name) for pattern in patterns)
    ]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _extra_names(instance, schema)
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif additional is False and extras:
        yield ValidationError("has properties the schema does not allow")


# jsonschema's own `pattern`, `patternProperties` and `additionalProperties` call `re.search`
# (a backtracking engine) on caller input: these three are replaced through jsonschema's public
# `extend`, everything else is the standard 2020-12 vocabulary.
_Validator: Any = extend(  # type: ignore[no-untyped-call]  # jsonschema's stub leaves it untyped
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


class AttributePolicy:
    """Validates attribute objects and knows which attributes are private."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self._validator: Any = None
        self.private_names: frozenset[str] = frozenset()
        # What end users see and change of their own profile's attributes: only those the
        # schema marks `"endUser": "read"` or `"edit"` (docs/end-users.md); none without one.
        self.end_user_readable: frozenset[str] = frozenset()
        self.end_user_editable: frozenset[str] = frozenset()
        self.names: frozenset[str] = frozenset()  # the schema's top-level properties
        if schema is not None:
            Draft202012Validator.check_schema(schema)
            _check_patterns(schema)
            self._validator = _Validator(schema)
            properties = schema.get("properties", {})
            self.private_names = frozenset(
                name
                for name, spec in properties.items()
                if isinstance(spec, dict) and spec.get("private") is True
            )
            self.end_user_readable, self.end_user_editable = _end_user_access(properties)
            self.names = frozenset(properties) if isinstance(properties, dict) else frozenset()

    @classmethod
    def from_file(cls, path: Path) -> AttributePolicy:
        """Load a schema file; raises ValueError with a readable reason when it is unusable."""
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read attribute schema {path}: {error}") from error
        if not isinstance(schema, dict):
            raise ValueError(f"attribute schema {path} must be a JSON object")
        try:
            return cls(schema)
        except SchemaError as error:
            raise ValueError(f"attribute schema {path} is not valid JSON Schema: {error.message}") from error

    def errors(self, attributes: JSONObject, *, hidden: frozenset[str] = frozenset()) -> list[FieldError]:
        """What is wrong with `attributes`, in messages that quote no value of them.

        `hidden`: attributes (present or not) that the caller may not read. The whole object is what the
        schema judges, but what the caller is told must not depend on what it cannot read: when
        the object fails, the errors reported are those of the caller's own view (the object
        without the hidden attributes); when that view passes, the failure comes from a rule
        that involves hidden attributes, and only that is said. Whether a write is refused at
        all can still depend on them: a schema that relates private attributes to others says
        so by design (docs/security.md)."""
        if self._validator is None:
            return _default_errors(attributes)
        hidden_here = hidden.intersection(attributes)
        if not hidden_here:
            return self._schema_errors(attributes, frozenset(), hidden)
        if not any(True for _ in self._validator.iter_errors(attributes)):
            return []
        view = {name: value for name, value in attributes.items() if name not in hidden_here}
        return self._schema_errors(view, hidden_here, hidden) or [FieldError("/attributes", _HIDDEN_CONFLICT)]

    def _schema_errors(
        self, attributes: JSONObject, hidden: frozenset[str], unnamed: frozenset[str]
    ) -> list[FieldError]:
        """`hidden`: attributes of the whole object left out of `attributes` (the caller's view);
        `unnamed`: attributes a message about the whole object must not name (a `required` one
        the caller cannot read). A message naming one the whole object holds is left out (the
        view lacks it, the object does not); one naming another is said as a conflict with
        attributes the caller cannot read."""
        found: list[FieldError] = []
        for error in self._validator.iter_errors(attributes):
            path = list(error.absolute_path)
            if path and path[0] in hidden:
                found.append(FieldError("/attributes", _HIDDEN_MESSAGE))
                continue
            location = "/attributes" + "".join(f"/{part}" for part in path)
            for message in _messages(error):
                names_attributes = not path and error.validator in _NAMING_KEYWORDS
                named = {name for name in unnamed if f"`{name}`" in message} if names_attributes else set()
                if named & hidden:
                    continue  # about an attribute the whole object holds: not what is wrong
                if named:
                    found.append(FieldError("/attributes", _HIDDEN_CONFLICT))
                else:
                    found.append(FieldError(location, message))
        return list(dict.fromkeys(found))

    def visible(self, attributes: JSONObject, *, admin: bool) -> JSONObject:
        """The attributes a caller may see."""
        if admin or not self.private_names:
            return attributes
        return {name: value for name, value in attributes.items() if name not in self.private_names}


_END_USER_ACCESS = ("read", "edit")
# The keywords whose messages name top-level attributes of the schema (not of the caller's input).
_NAMING_KEYWORDS = ("required", "dependentRequired")


def _end_user_access(properties: object) -> tuple[frozenset[str], frozenset[str]]:
    """The attributes end users may read and those they may change, from each property's
    `endUser` ("read" or "edit"); a private attribute is never theirs."""
    if not isinstance(properties, dict):
        return frozenset(), frozenset()
    readable: set[str] = set()
    editable: set[str] = set()
    for name, spec in properties.items():
        access = spec.get("endUser") if isinstance(spec, dict) else None
        if access is None:
            continue
        if access not in _END_USER_ACCESS:
            raise SchemaError(f'attribute {name!r}: `endUser` is "read" or "edit", not {access!r}')
        if spec.get("private") is True:
            raise SchemaError(f"attribute {name!r} is private: it cannot be `endUser` too")
        readable.add(name)
        if access == "edit":
            editable.add(name)
    return frozenset(readable), frozenset(editable)


def _check_patterns(schema: object) -> None:
    """Every pattern must compile on RE2, and `unevaluatedProperties` must not meet
    `patternProperties` (jsonschema matches those names with a backtracking engine)."""
    pending = [schema]
    uses_unevaluated = uses_pattern_properties = False
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        patterns = list(node.get("patternProperties", {}) or {})
        if isinstance(node.get("pattern"), str):
            patterns.append(node["pattern"])
        for pattern in patterns:
            try:
                _compiled(pattern)
            except re2.error as error:
                raise SchemaError(f"pattern {pattern!r} needs RE2 syntax: {error}") from None
        uses_unevaluated |= "unevaluatedProperties" in node
        uses_pattern_properties |= bool(node.get("patternProperties"))
        pending.extend(node.values())
    if uses_unevaluated and uses_pattern_properties:
        raise SchemaError("`unevaluatedProperties` cannot be combined with `patternProperties`")


def _quoted(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 1] + "…"


def _messages(error: ValidationError) -> list[str]:
    """The message of one failed keyword, from the schema alone (see the module's docstring)."""
    keyword = error.validator
    value: Any = error.validator_value
    instance = error.instance
    match keyword:
        case "type":
            kinds = value if isinstance(value, list) else [value]
            return [f"must be of type {' or '.join(map(str, kinds))}"]
        case "enum":
            return [f"must be one of {_quoted(value)}"]
        case "const":
            return [f"must be {_quoted(value)}"]
        case "required":
            present = instance if isinstance(instance, dict) else {}
            return [f"`{name}` is required" for name in value if name not in present] or ["is incomplete"]
        case "dependentRequired":
            present = instance if isinstance(instance, dict) else {}
            return [
                f"`{needed}` is required when `{name}` is present"
                for name, needs in value.items()
                if name in present
                for needed in needs
                if needed not in present
            ] or ["is incomplete"]
        case "maxProperties":
            return [f"at most {value} properties"]
        case "minProperties":
            return [f"at least {value} properties"]
        case "maxLength":
            return [f"at most {value} characters"]
        case "minLength":
            return [f"at least {value} characters"]
        case "maxItems":
            return [f"at most {value} items"]
        case "minItems":
            return [f"at least {value} items"]
        case "maximum":
            return [f"must be at most {value}"]
        case "minimum":
            return [f"must be at least {value}"]
        case "exclusiveMaximum":
            return [f"must be less than {value}"]
        case "exclusiveMinimum":
            return [f"must be greater than {value}"]
        case "multipleOf":
            return [f"must be a multiple of {value}"]
        case "pattern":
            return [f"must match the pattern {_quoted(value)}"]
        case "format":
            return [f"must be a valid {value}"]
        case "uniqueItems":
            return ["items must be unique"]
        case "contains" | "minContains" | "maxContains":
            return ["does not contain the items the schema asks for"]
        case "additionalProperties" if isinstance(instance, dict) and isinstance(error.schema, Mapping):
            # The names only: a caller's own (private attributes are declared, never extra).
            names = ", ".join(f"`{name}`" for name in _extra_names(instance, error.schema))
            return [f"properties not allowed by the schema: {names}"[:_MAX_QUOTED]]
        case "additionalProperties" | "unevaluatedProperties":
            return ["has properties the schema does not allow"]
        case "propertyNames":
            return ["has a property name the schema does not allow"]
        case "anyOf":
            return ["must match at least one of the schemas allowed here"]
        case "oneOf":
            return ["must match exactly one of the schemas allowed here"]
        case "not":
            return ["matches a schema that is not allowed here"]
    return ["does not meet the schema"]


def _default_errors(attributes: JSONObject) -> list[FieldError]:
    errors: list[FieldError] = []
    if len(attributes) > DEFAULT_MAX_KEYS:
        errors.append(FieldError("/attributes", f"at most {DEFAULT_MAX_KEYS} attributes"))
    for name, value in attributes.items():
        location = f"/attributes/{name}"
        if not name or len(name) > _MAX_KEY_LENGTH:
            errors.append(FieldError(location, f"names are 1-{_MAX_KEY_LENGTH} characters"))
        if isinstance(value, (dict, list)):
            errors.append(FieldError(location, "must be a string, number, boolean or null"))
        elif isinstance(value, str) and len(value) > _MAX_STRING_LENGTH:
            errors.append(FieldError(location, f"at most {_MAX_STRING_LENGTH} characters"))
    return errors
