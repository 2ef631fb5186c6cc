"""Each published REST version's OpenAPI document, committed under `contracts/rest/`, and the
changes between two documents that would break a client of that version.

Export (after a change to the API that keeps every published version's promises):

    python -m tests.contract.openapi_documents export

`test_openapi_documents.py` fails when the served documents and the committed ones differ, and
names the differences that break clients (a published version may only grow: new operations,
new optional inputs, new answer fields; anything else needs a new version).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from keel.api.rest.api_versions import SUPPORTED_VERSIONS
from keel.config import Settings
from keel.storage.migrations.runner import migrate
from tests.e2e.conftest import make_api

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "contracts" / "rest"

Document = dict[str, Any]


# Every version's document, and the one of the routes outside the versions (`GET /v1/versions`).
UNVERSIONED = "unversioned"
DOCUMENTS = (*sorted(SUPPORTED_VERSIONS), UNVERSIONED)


def committed_path(version: str) -> Path:
    return FOLDER / f"{version}.openapi.json"


def normalized(document: Document) -> Document:
    """The document without Keel's own release number (`info.version`), which changes with every
    release and promises nothing to clients."""
    copy: Document = json.loads(json.dumps(document))
    copy.get("info", {}).pop("version", None)
    return copy


async def served_documents() -> dict[str, Document]:
    """Every supported version's document and the unversioned one, as a Keel on a throwaway
    SQLite database serves them."""
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/keel.sqlite3"
        await asyncio.to_thread(migrate, url)
        api, deployment = await make_api(Settings(database_url=url))
        try:
            async with api.client:
                documents = {}
                for version in DOCUMENTS:
                    answer = await api.client.get("/openapi.json", params={"version": version})
                    answer.raise_for_status()
                    documents[version] = normalized(answer.json())
                return documents
        finally:
            await deployment.close()


def dumps(document: Document) -> str:
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- breaking changes


def _resolve(document: Document, schema: Any) -> Any:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 20:
        path = schema["$ref"].removeprefix("#/").split("/")
        target: Any = document
        for part in path:
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema, seen = target, seen + 1
    return schema


def _properties(document: Document, schema: Any) -> tuple[dict[str, Any], set[str]]:
    """An object schema's properties and required names, through `$ref`s and a nullable
    `anyOf` (Pydantic writes `X | None` as `anyOf: [X, null]`)."""
    schema = _resolve(document, schema)
    if isinstance(schema, dict) and "anyOf" in schema:
        objects = [
            _resolve(document, s) for s in schema["anyOf"] if _resolve(document, s).get("type") != "null"
        ]
        schema = objects[0] if len(objects) == 1 else {}
    if not isinstance(schema, dict):
        return {}, set()
    return schema.get("properties", {}), set(schema.get("required", []))


def _types(document: Document, schema: Any) -> set[str]:
    schema = _resolve(document, schema)
    if not isinstance(schema, dict):
        return set()
    if "anyOf" in schema:
        return set().union(*(_types(document, s) for s in schema["anyOf"]))
    kind = schema.get("type")
    return {kind} if isinstance(kind, str) else set(kind or ())


def _json_schema(operation_part: dict[str, Any]) -> Any:
    content = operation_part.get("content", {})
    for media_type, body in content.items():
        if "json" in media_type:
            return body.get("schema")
    return None


def _compare_answers(old: Document, new: Document, where: str, old_schema: Any, new_schema: Any) -> list[str]:
    """An answer's body may gain fields; it may not lose one, stop guaranteeing one, or change a
    field's type. Nested objects are compared as deep as both documents describe them."""
    found: list[str] = []
    old_props, old_required = _properties(old, old_schema)
    new_props, new_required = _properties(new, new_schema)
    for name, old_prop in old_props.items():
        if name not in new_props:
            found.append(f"{where}: answer field {name!r} removed")
            continue
        if name in old_required and name not in new_required:
            found.append(f"{where}: answer field {name!r} no longer always present")
        old_types, new_types = _types(old, old_prop), _types(new, new_props[name])
        if old_types and new_types and not new_types <= old_types:
            found.append(f"{where}: answer field {name!r} may now be {sorted(new_types - old_types)}")
        found += _compare_answers(old, new, f"{where}.{name}", old_prop, new_props[name])
        old_items, new_items = _items(old, old_prop), _items(new, new_props[name])
        if old_items is not None and new_items is not None:
            found += _compare_answers(old, new, f"{where}.{name}[]", old_items, new_items)
    return found


def _value_schema(document: Document, schema: Any) -> dict[str, Any]:
    """The schema of a value, through `$ref`s, with a nullable `anyOf` (`X | None`) read as X."""
    schema = _resolve(document, schema)
    if isinstance(schema, dict) and "anyOf" in schema:
        branches = [_resolve(document, s) for s in schema["anyOf"]]
        values = [b for b in branches if isinstance(b, dict) and b.get("type") != "null"]
        if len(values) == 1:
            # Rules written beside the `anyOf` (Pydantic puts `json_schema_extra` there: an enum,
            # a pattern, a maxLength) apply to the value as much as the branch's own.
            beside = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**beside, **values[0], "type": _types(document, schema) or values[0].get("type")}
    return schema if isinstance(schema, dict) else {}


_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems")


def _narrowed(old: Document, new: Document, where: str, old_schema: Any, new_schema: Any) -> list[str]:
    """How an input's schema accepts less than it did: types, enum values, bounds, pattern."""
    found: list[str] = []
    before, after = _value_schema(old, old_schema), _value_schema(new, new_schema)
    old_types, new_types = _types(old, old_schema), _types(new, new_schema)
    if old_types and new_types and not old_types <= new_types:
        found.append(f"{where}: no longer accepts {sorted(old_types - new_types)}")
    if "enum" in after:
        lost = {json.dumps(v) for v in before.get("enum", [])} - {json.dumps(v) for v in after["enum"]}
        if "enum" not in before:
            found.append(f"{where}: now limited to a list of values")
        elif lost:
            found.append(f"{where}: no longer accepts {sorted(lost)}")
    for bound in _LOWER_BOUNDS:
        if bound in after and (bound not in before or after[bound] > before[bound]):
            found.append(f"{where}: {bound} raised to {after[bound]}")
    for bound in _UPPER_BOUNDS:
        if bound in after and (bound not in before or after[bound] < before[bound]):
            found.append(f"{where}: {bound} lowered to {after[bound]}")
    if after.get("pattern") is not None and after.get("pattern") != before.get("pattern"):
        found.append(f"{where}: pattern changed")
    return found


def _compare_inputs(old: Document, new: Document, where: str, old_schema: Any, new_schema: Any) -> list[str]:
    """A request body may gain optional fields; it may not lose one (unknown fields are refused),
    require a new one, or accept less for a field (types, enum values, bounds, pattern)."""
    found: list[str] = []
    old_props, old_required = _properties(old, old_schema)
    new_props, new_required = _properties(new, new_schema)
    for name in old_props:
        if name not in new_props:
            found.append(f"{where}: request field {name!r} removed")
        else:
            found += _narrowed(old, new, f"{where}: request field {name!r}", old_props[name], new_props[name])
    for name in sorted(new_required - old_required):
        found.append(f"{where}: request field {name!r} now required")
    for name in old_props.keys() & new_props.keys():
        found += _compare_inputs(old, new, f"{where}.{name}", old_props[name], new_props[name])
        old_items, new_items = _items(old, old_props[name]), _items(new, new_props[name])
        if old_items is not None and new_items is not None:
            found += _narrowed(old, new, f"{where}: items of {name!r}", old_items, new_items)
            found += _compare_inputs(old, new, f"{where}.{name}[]", old_items, new_items)
    return found


def _items(document: Document, schema: Any) -> Any:
    """An array schema's item schema (through `$ref`s and a nullable `anyOf`), or None."""
    schema = _resolve(document, schema)
    if isinstance(schema, dict) and "anyOf" in schema:
        arrays = [
            _resolve(document, s) for s in schema["anyOf"] if _resolve(document, s).get("type") == "array"
        ]
        schema = arrays[0] if len(arrays) == 1 else {}
    return schema.get("items") if isinstance(schema, dict) else None


def _parameters(document: Document, operation: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for parameter in operation.get("parameters", []):
        parameter = _resolve(document, parameter)
        place, name = parameter.get("in", ""), parameter.get("name", "")
        found[(place, name.lower() if place == "header" else name)] = parameter  # header names: any case
    return found


def breaking_changes(old: Document, new: Document) -> list[str]:
    """What a client written against `old` could see fail against `new`."""
    found: list[str] = []
    for path, operations in old.get("paths", {}).items():
        for method, old_operation in operations.items():
            where = f"{method.upper()} {path}"
            new_operation = new.get("paths", {}).get(path, {}).get(method)
            if new_operation is None:
                found.append(f"{where}: operation removed")
                continue
            old_parameters = _parameters(old, old_operation)
            new_parameters = _parameters(new, new_operation)
            for key, parameter in new_parameters.items():
                if parameter.get("required") and key not in old_parameters:
                    found.append(f"{where}: new required {key[0]} parameter {key[1]!r}")
            for key, parameter in old_parameters.items():
                replacement = new_parameters.get(key)
                if replacement is None:
                    found.append(f"{where}: {key[0]} parameter {key[1]!r} removed")
                    continue
                if replacement.get("required") and not parameter.get("required"):
                    found.append(f"{where}: {key[0]} parameter {key[1]!r} now required")
                found += _narrowed(
                    old,
                    new,
                    f"{where}: {key[0]} parameter {key[1]!r}",
                    parameter.get("schema"),
                    replacement.get("schema"),
                )
            old_body = old_operation.get("requestBody")
            new_body = new_operation.get("requestBody")
            if (
                new_body is not None
                and new_body.get("required")
                and (old_body is None or not old_body.get("required"))
            ):
                found.append(f"{where}: a request body is now required")
            if old_body is not None and new_body is None:
                found.append(f"{where}: the request body is no longer read")
            if old_body is not None and new_body is not None:
                for media_type in old_body.get("content", {}).keys() - new_body.get("content", {}).keys():
                    found.append(f"{where}: request media type {media_type} no longer accepted")
                found += _compare_inputs(old, new, where, _json_schema(old_body), _json_schema(new_body))
            for status, old_answer in old_operation.get("responses", {}).items():
                if not status.startswith("2"):
                    continue  # errors may be added, split or retired: clients handle them by status class
                new_answer = new_operation.get("responses", {}).get(status)
                if new_answer is None:
                    found.append(f"{where}: answer {status} removed")
                    continue
                for media_type in old_answer.get("content", {}).keys() - new_answer.get("content", {}).keys():
                    found.append(f"{where}: answer {status} no longer {media_type}")
                found += _compare_answers(
                    old, new, f"{where} {status}", _json_schema(old_answer), _json_schema(new_answer)
                )
    return found


def export() -> None:
    documents = asyncio.run(served_documents())
    FOLDER.mkdir(parents=True, exist_ok=True)
    for version, document in documents.items():
        path = committed_path(version)
        if path.exists():
            breaking = breaking_changes(json.loads(path.read_text()), document)
            if breaking:
                sys.exit(f"not exported: {version} would break its clients:\n  " + "\n  ".join(breaking))
        path.write_text(dumps(document))
        print(f"exported {path.relative_to(REPO)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["export"]:
        sys.exit(__doc__)
    export()
