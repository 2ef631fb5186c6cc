"""Every published version's OpenAPI document is committed (`contracts/rest/<version>.openapi.json`)
and served unchanged; a difference fails, naming the changes that would break that version's
clients. The breaking-change rules are tested on small documents below."""

from __future__ import annotations

import json
from typing import Any

from keel.api.rest.api_versions import SUPPORTED_VERSIONS
from tests.contract.openapi_documents import (
    UNVERSIONED,
    breaking_changes,
    committed_path,
    dumps,
    served_documents,
)


async def test_every_version_serves_its_committed_document() -> None:
    served = await served_documents()
    assert set(served) == SUPPORTED_VERSIONS | {UNVERSIONED}
    for version, document in served.items():
        path = committed_path(version)
        assert path.exists(), f"{path.name} is missing: python -m tests.contract.openapi_documents export"
        committed = json.loads(path.read_text())
        breaking = breaking_changes(committed, document)
        assert dumps(document) == dumps(committed), (
            f"{version}'s OpenAPI document changed; breaking changes: {breaking or 'none'}"
            " (if none, re-export: python -m tests.contract.openapi_documents export)"
        )


def _document(
    response: dict[str, Any],
    request: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "parameters": parameters or [],
        "responses": {
            "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Out"}}}}
        },
    }
    if request is not None:
        operation["requestBody"] = {"content": {"application/json": {"schema": request}}, "required": True}
    return {"paths": {"/v1/things": {"post": operation}}, "components": {"schemas": {"Out": response}}}


OUT: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "tags": {"type": "array"}},
    "required": ["id", "name"],
}
IN: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
LIMIT = {"in": "query", "name": "limit", "required": False, "schema": {"type": "integer"}}
ORDER = {"in": "query", "name": "order", "required": False, "schema": {"enum": ["asc", "desc"]}}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps({**base, **changes}))
    return copy


def test_a_version_may_grow() -> None:
    """New operations, optional inputs and answer fields, and wider inputs break no client."""
    old = _document(OUT, IN, [LIMIT])
    grown_out = _with(OUT, properties={**OUT["properties"], "bio": {"type": "string"}})
    grown_in = _with(IN, properties={**IN["properties"], "bio": {"type": "string"}})
    wider_limit = _with(LIMIT, schema={"anyOf": [{"type": "integer"}, {"type": "null"}]})
    new = _document(grown_out, grown_in, [wider_limit, ORDER])
    new["paths"]["/v1/others"] = new["paths"]["/v1/things"]
    assert breaking_changes(old, new) == []


def test_what_breaks_a_client_is_named() -> None:
    old = _document(OUT, IN, [LIMIT, ORDER])
    cases = {
        "answer field 'name' removed": _document(
            _with(OUT, properties={"id": {"type": "string"}, "tags": {"type": "array"}}, required=["id"]),
            IN,
            [LIMIT, ORDER],
        ),
        "answer field 'name' no longer always present": _document(
            _with(OUT, required=["id"]), IN, [LIMIT, ORDER]
        ),
        "answer field 'id' may now be ['integer']": _document(
            _with(OUT, properties={**OUT["properties"], "id": {"type": "integer"}}), IN, [LIMIT, ORDER]
        ),
        "request field 'bio' now required": _document(
            OUT,
            _with(IN, properties={**IN["properties"], "bio": {"type": "string"}}, required=["name", "bio"]),
            [LIMIT, ORDER],
        ),
        "request field 'name' removed": _document(OUT, _with(IN, properties={}, required=[]), [LIMIT, ORDER]),
        "query parameter 'limit': maximum lowered to 10": _document(
            OUT, IN, [_with(LIMIT, schema={"type": "integer", "maximum": 10}), ORDER]
        ),
        "query parameter 'limit': no longer accepts ['integer']": _document(
            OUT, IN, [_with(LIMIT, schema={"type": "string"}), ORDER]
        ),
        "request field 'name': maxLength lowered to 5": _document(
            OUT, _with(IN, properties={"name": {"type": "string", "maxLength": 5}}), [LIMIT, ORDER]
        ),
        "request field 'name': now limited to a list of values": _document(
            OUT, _with(IN, properties={"name": {"type": "string", "enum": ["a"]}}), [LIMIT, ORDER]
        ),
        "query parameter 'limit' removed": _document(OUT, IN, [ORDER]),
        """query parameter 'order': no longer accepts ['"desc"']""": _document(
            OUT, IN, [LIMIT, _with(ORDER, schema={"enum": ["asc"]})]
        ),
        "new required header parameter 'x-tenant'": _document(
            OUT,
            IN,
            [
                LIMIT,
                ORDER,
                {"in": "header", "name": "X-Tenant", "required": True, "schema": {"type": "string"}},
            ],
        ),
        "operation removed": {"paths": {}, "components": old["components"]},
    }
    for expected, new in cases.items():
        found = breaking_changes(old, new)
        assert any(expected in change for change in found), (expected, found)


def test_changes_deep_in_the_published_document_are_found() -> None:
    """Nested objects and array items of the real document: an email's fields, in requests and
    answers of every operation that carries them."""
    published = json.loads(committed_path("2026-11-28").read_text())
    stricter = json.loads(json.dumps(published))
    stricter["components"]["schemas"]["EmailIn"]["required"] = ["address", "verified"]
    assert "POST /v1/profiles.emails[]: request field 'verified' now required" in breaking_changes(
        published, stricter
    )
    poorer = json.loads(json.dumps(published))
    del poorer["components"]["schemas"]["EmailOut"]["properties"]["verified"]
    found = breaking_changes(published, poorer)
    assert "GET /v1/profiles/{profile_id} 200.emails[]: answer field 'verified' removed" in found
    assert "GET /v1/profiles 200.items[].emails[]: answer field 'verified' removed" in found


def test_the_real_document_changed_where_clients_feel_it() -> None:
    """The checks of a review, on the published document: each change must be named."""
    published = json.loads(committed_path("2026-11-28").read_text())

    def changed(edit: Any) -> list[str]:
        copy = json.loads(json.dumps(published))
        edit(copy)
        return breaking_changes(published, copy)

    schemas = "components", "schemas"

    def fewer_event_types(d: Any) -> None:
        items = d[schemas[0]][schemas[1]]["WebhookCreate"]["properties"]["event_types"]["items"]
        items["enum"] = items["enum"][:1]

    def shorter_bio(d: Any) -> None:
        bio = d[schemas[0]][schemas[1]]["ProfileCreate"]["properties"]["bio"]
        for branch in bio.get("anyOf", [bio]):
            if branch.get("type") == "string":
                branch["maxLength"] = 5

    def no_create_body(d: Any) -> None:
        del d["paths"]["/v1/profiles"]["post"]["requestBody"]

    def header_in_other_case(d: Any) -> None:
        for parameter in d["paths"]["/v1/profiles/{profile_id}"]["patch"]["parameters"]:
            if parameter.get("name") == "if-match":
                parameter["name"] = "If-Match"

    def fewer_timezones(d: Any) -> None:
        timezone = d[schemas[0]][schemas[1]]["ProfileCreate"]["properties"]["timezone"]
        timezone["enum"] = [zone for zone in timezone["enum"] if zone != "Europe/London"]

    # Beside a nullable `anyOf`, where Pydantic writes an extra rule such as this enum.
    assert any("'timezone': no longer accepts" in c for c in changed(fewer_timezones))
    assert any("items of 'event_types': no longer accepts" in c for c in changed(fewer_event_types))
    assert any("'bio': maxLength lowered to 5" in c for c in changed(shorter_bio))
    assert "POST /v1/profiles: the request body is no longer read" in changed(no_create_body)
    assert changed(header_in_other_case) == []
