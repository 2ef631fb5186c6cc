"""Custom attributes: validated by an operator-supplied JSON Schema, or by a default rule.

A property of the schema's top-level `properties` may carry `"private": true`; such attributes
are returned only to admin callers and written only by them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from keel.domain.errors import FieldError
from keel.domain.profile import JSONObject

DEFAULT_MAX_KEYS = 50
_MAX_KEY_LENGTH = 64
_MAX_STRING_LENGTH = 1000


class AttributePolicy:
    """Validates attribute objects and knows which attributes are private."""

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self._validator: Draft202012Validator | None = None
        self.private_names: frozenset[str] = frozenset()
        if schema is not None:
            Draft202012Validator.check_schema(schema)
            self._validator = Draft202012Validator(schema)
            properties = schema.get("properties", {})
            self.private_names = frozenset(
                name
                for name, spec in properties.items()
                if isinstance(spec, dict) and spec.get("private") is True
            )

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

    def errors(self, attributes: JSONObject) -> list[FieldError]:
        if self._validator is not None:
            return [
                FieldError(
                    "/attributes" + "".join(f"/{part}" for part in error.absolute_path),
                    error.message,
                )
                for error in self._validator.iter_errors(attributes)
            ]
        return _default_errors(attributes)

    def visible(self, attributes: JSONObject, *, admin: bool) -> JSONObject:
        """The attributes a caller may see."""
        if admin or not self.private_names:
            return attributes
        return {name: value for name, value in attributes.items() if name not in self.private_names}


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
