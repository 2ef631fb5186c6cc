"""The committed event schemas (contracts/events/) are the reviewed contract of the events Keel
publishes: they must match the code, a change that would break a consumer is named, and every
event Keel really emits validates against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from keel.domain.api_keys import AuditEntry, Principal, Scope
from keel.domain.events import EVENT_TYPES, admin_action, erased_payload, profile_erased
from keel.service.attributes import AttributePolicy
from keel.service.auth import issue_api_key, revoke_api_key
from keel.service.event_contracts import ENVELOPE, contract_files
from keel.service.outbox import cloud_event
from keel.service.ports import OutboxRecord
from keel.service.profiles import ProfileService
from tests.fakes import FakeClock, InMemoryStore

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts" / "events"
WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()


def breaking_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """What a consumer written against `old` could trip on in `new`: a property gone, a property
    no longer required (consumers rely on its presence), a value of a type or constant the old
    schema did not allow."""
    if not isinstance(old, dict):
        return []
    if not isinstance(new, dict):
        return [f"{path or '/'}: schema removed"]
    found: list[str] = []
    if _types(old) and not _types(new) <= _types(old):
        found.append(f"{path or '/'}: type {sorted(_types(old))} became {sorted(_types(new))}")
    if "const" in old and old.get("const") != new.get("const"):
        found.append(f"{path or '/'}: const {old['const']!r} became {new.get('const')!r}")
    for name in sorted(set(old.get("required", [])) - set(new.get("required", []))):
        found.append(f"{path}/{name}: no longer required")
    old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
    for name, schema in old_properties.items():
        if name not in new_properties:
            found.append(f"{path}/{name}: removed")
        else:
            found.extend(breaking_changes(schema, new_properties[name], f"{path}/{name}"))
    if "items" in old:
        found.extend(breaking_changes(old["items"], new.get("items"), f"{path}/items"))
    return found


def test_committed_event_schemas_match_the_code() -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in sorted(CONTRACTS.glob("*.json"))}
    current = contract_files()
    breaking = [
        f"{name}{change}"
        for name, text in committed.items()
        for change in breaking_changes(json.loads(text), json.loads(current.get(name, "null")))
    ]
    assert committed == current, (
        "The event schemas changed: run `python -m keel.service.event_contracts` and commit"
        " contracts/events/ with the change, so that it is reviewed. A breaking change to a payload"
        f" needs a new event type (.v2) instead. Breaking changes: {breaking or 'none'}"
    )


def test_breaking_changes_are_named_and_additions_are_not() -> None:
    old = json.loads(contract_files()["keel.profile.updated.v1.json"])
    added = json.loads(json.dumps(old))
    added["properties"]["nickname"] = {"type": "string"}
    assert breaking_changes(old, added) == []

    removed = json.loads(json.dumps(old))
    del removed["properties"]["handle"]
    removed["required"].remove("handle")
    assert breaking_changes(old, removed) == ["/handle: no longer required", "/handle: removed"]

    retyped = json.loads(json.dumps(old))
    retyped["properties"]["version"]["type"] = "string"
    assert breaking_changes(old, retyped) == ["/version: type ['integer'] became ['string']"]

    optional = json.loads(json.dumps(old))
    optional["properties"]["emails"]["items"]["required"].remove("primary")
    assert breaking_changes(old, optional) == ["/emails/items/primary: no longer required"]


async def test_every_emitted_event_validates_against_the_committed_schemas() -> None:
    store, clock = InMemoryStore(), FakeClock()
    service = ProfileService(store, clock, AttributePolicy(), "eu1")
    created = (
        await service.create_profile(
            WRITER,
            {
                "handle": "ada_l",
                "emails": [{"address": "ada@example.com", "primary": True}],
                "links": [{"kind": "website", "url": "https://example.com/ada"}],
                "attributes": {"plan": "pro"},
            },
        )
    ).profile
    await service.update_profile(WRITER, created.id, {"display_name": "Ada", "bio": None})
    await service.delete_profile(WRITER, created.id)
    issued = await issue_api_key(
        store, clock, scopes=[Scope.PROFILES_READ], api_version="2026-11-28", name="k"
    )
    assert await revoke_api_key(store, clock, issued.key.id)

    def validator(name: str) -> Draft202012Validator:
        schema = json.loads((CONTRACTS / name).read_text(encoding="utf-8"))
        return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

    envelope = validator(ENVELOPE)
    # The erasure saga's event (its run on real databases: test_personal_data_lifecycle.py),
    # and the erased forms erasure leaves in place of the profile's past payloads.
    erased = profile_erased(created.id, 4, clock.now(), "era_0")
    # An admin's action, as the audit log records it (its run: test_api_key_admin.py).
    entry = AuditEntry(
        clock.now(), "k" * 16, "key.updated", issued.key.id, {"scopes": ["profiles:read"], "name": "n"}
    )
    records = [
        *store.tables.events,
        OutboxRecord(seq=0, event=erased, source="/keel", published_at=None),
        OutboxRecord(seq=0, event=admin_action(entry), source="/keel", published_at=None),
    ]
    events = [cloud_event(record) for record in records]
    events += [
        {**event, "data": erased_payload(event["type"], event["data"], clock.now())} for event in events[:3]
    ]
    assert [e["type"] for e in events[: len(EVENT_TYPES)]] == list(EVENT_TYPES)
    for event in events:
        errors = [e.message for e in envelope.iter_errors(event)]
        errors += [e.message for e in validator(f"{event['type']}.json").iter_errors(event["data"])]
        assert errors == [], (event["type"], errors)
    assert [e["data"].get("version") for e in events[:3]] == [1, 2, 3]
    assert {e["subject"] for e in events[:3]} == {created.id}
