"""The JSON Schemas of the events Keel publishes: the CloudEvents envelope and one payload
(`data`) schema per event type. They are exported to `contracts/events/` and reviewed there
(tests/unit/test_event_contracts.py fails when the committed files differ from these, and names
the breaking changes). A breaking change to a payload gets a new type (`...v2`), not an edit.

`python -m keel.service.event_contracts [DIR]` writes the files (default: contracts/events).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from keel.domain.events import (
    ADMIN_ACTION,
    API_KEY_CREATED,
    API_KEY_REVOKED,
    EVENT_TYPES,
    PROFILE_CREATED,
    PROFILE_DELETED,
    PROFILE_ERASED,
    PROFILE_UPDATED,
)

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_VERSION = {"type": "integer", "minimum": 1, "description": "The profile's version after the change."}


def _object(properties: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    # Consumers must ignore properties they do not know: adding one is not a breaking change.
    return {
        "type": "object",
        "properties": properties,
        "required": required if required is not None else sorted(properties),
        "additionalProperties": True,
    }


_PROFILE = _object(
    {
        "id": _STRING,
        "version": _VERSION,
        "handle": _STRING,
        "emails": {
            "type": "array",
            "items": _object(
                {"address": _STRING, "verified": {"type": "boolean"}, "primary": {"type": "boolean"}}
            ),
        },
        "display_name": _NULLABLE_STRING,
        "bio": _NULLABLE_STRING,
        "avatar_url": _NULLABLE_STRING,
        "locale": _NULLABLE_STRING,
        "timezone": _NULLABLE_STRING,
        "links": {"type": "array", "items": _object({"kind": _STRING, "url": _STRING})},
        "attributes": {"type": "object"},
        "created_at": _TIME,
        "updated_at": _TIME,
    }
)
# A past event of an erased profile keeps its shape with every personal value blanked, and says
# when the profile was erased (optional: only such events carry it).
_PROFILE["properties"]["erased_at"] = _TIME

_DATA_SCHEMAS: dict[str, dict[str, Any]] = {
    PROFILE_CREATED: _PROFILE,
    PROFILE_UPDATED: _PROFILE,
    PROFILE_DELETED: _object({"id": _STRING, "version": _VERSION, "deleted_at": _TIME}),
    API_KEY_CREATED: _object(
        {
            "key_id": _STRING,
            "name": _STRING,
            "scopes": {"type": "array", "items": _STRING},
            "api_version": _STRING,
            "plan": _STRING,
            "created_at": _TIME,
        }
    ),
    API_KEY_REVOKED: _object({"key_id": _STRING, "revoked_at": _TIME}),
    ADMIN_ACTION: _object(
        {
            "actor": {**_STRING, "description": "The id of the admin key that acted, or `cli`."},
            "action": {
                **_STRING,
                "description": "key.created, key.updated, key.rotated, key.expired, key.revoked,"
                " profile.end_user_linked or profile.end_user_unlinked",
            },
            "subject": {**_STRING, "description": "The key or the profile acted on."},
            "at": _TIME,
            "detail": {"type": "object", "description": "What changed; never a secret."},
        }
    ),
    PROFILE_ERASED: _object(
        {
            "id": _STRING,
            "version": {**_VERSION, "description": "One past the profile's last version."},
            "erased_at": _TIME,
            "erasure_id": _STRING,
        }
    ),
}

ENVELOPE = "cloudevent.json"


def data_schema(event_type: str) -> dict[str, Any]:
    return {"$schema": _DRAFT, "$id": f"{event_type}.json", "title": event_type, **_DATA_SCHEMAS[event_type]}


def envelope_schema() -> dict[str, Any]:
    """CloudEvents 1.0 (structured JSON) as Keel fills it in: every attribute present."""
    return {
        "$schema": _DRAFT,
        "$id": ENVELOPE,
        "title": "A Keel event (CloudEvents 1.0, JSON)",
        **_object(
            {
                "specversion": {"const": "1.0"},
                "id": {"type": "string", "minLength": 1},
                "source": {"type": "string", "minLength": 1},
                "type": {"enum": list(EVENT_TYPES)},
                "subject": {"type": "string", "minLength": 1},
                "time": _TIME,
                "datacontenttype": {"const": "application/json"},
                "data": {"type": "object"},
            }
        ),
    }


def contract_files() -> dict[str, str]:
    """File name -> text, as committed under contracts/events/."""
    schemas = {ENVELOPE: envelope_schema()} | {f"{t}.json": data_schema(t) for t in EVENT_TYPES}
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in schemas.items()}


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "contracts/events")
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contract_files().items():
        (directory / name).write_text(text, encoding="utf-8")
        print(directory / name)


if __name__ == "__main__":
    main()
