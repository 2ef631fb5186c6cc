"""Bad input gets a clear 4xx, never a 500: seeded random and hostile requests."""

from __future__ import annotations

import json
import random

from keel.domain.profile import JSONObject, JSONValue
from tests.e2e.conftest import Api

SEED = 20261128
STRANGE: list[JSONValue] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5e308,
    "",
    " ",
    "x" * 5000,
    "\u0000",
    "☃",
    "../../etc/passwd",
    "'; DROP TABLE profiles; --",
    [],
    {},
    [None],
    {"": None},
    "eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J",
]
FIELDS = [
    "handle",
    "emails",
    "display_name",
    "bio",
    "avatar_url",
    "locale",
    "timezone",
    "links",
    "attributes",
    "id",
]


def random_value(rng: random.Random, depth: int = 0) -> JSONValue:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(STRANGE)
    if roll < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {
        rng.choice([*FIELDS, "address", "primary", "kind", "url"]): random_value(rng, depth + 1)
        for _ in range(3)
    }


def random_document(rng: random.Random) -> JSONObject:
    return {name: random_value(rng) for name in rng.sample(FIELDS, rng.randint(0, len(FIELDS)))}


async def test_random_documents_never_cause_a_server_error(api: Api) -> None:
    rng = random.Random(SEED)
    location = (
        await api.client.post(
            "/v1/profiles",
            json={"handle": "target", "emails": [{"address": "t@example.com", "primary": True}]},
            headers=api.writer,
        )
    ).headers["location"]
    statuses: set[int] = set()
    for _ in range(150):
        document = random_document(rng)
        created = await api.client.post("/v1/profiles", json=document, headers=api.writer)
        patched = await api.client.patch(
            location, json=document, headers={**api.writer, "Content-Type": "application/merge-patch+json"}
        )
        for response in (created, patched):
            assert response.status_code < 500, (document, response.text)
            statuses.add(response.status_code)
    assert 422 in statuses


def _with_raw(headers: dict[str, str], name: str, value: bytes) -> dict[bytes, bytes]:
    """`headers` plus one header whose value is sent as the given bytes (not valid text)."""
    return {**{k.encode(): v.encode() for k, v in headers.items()}, name.encode(): value}


async def test_hostile_requests_never_cause_a_server_error(api: Api) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    deep_object = '{"attributes": ' + '{"a": ' * 5_000 + "1" + "}" * 5_000 + "}"
    location = "/v1/profiles/eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J"
    merge = {**api.writer, "Content-Type": "application/merge-patch+json"}
    json_type = {**api.writer, "Content-Type": "application/json"}
    responses = [
        await api.client.post("/v1/profiles", content=deep, headers=json_type),
        await api.client.post("/v1/profiles", content=deep_object, headers=json_type),
        await api.client.patch(location, content=deep, headers=merge),
        await api.client.patch(location, content=deep_object, headers=merge),
        await api.client.post("/v1/profiles", content=b"\xff\xfe", headers=json_type),
        await api.client.post("/v1/profiles", content=json.dumps([1, 2]), headers=json_type),
        await api.client.get("/v1/profiles", params={"limit": "ten"}, headers=api.reader),
        await api.client.get("/v1/profiles", params={"ids": ",,,"}, headers=api.reader),
        await api.client.get("/v1/profiles/%00", headers=api.reader),
        await api.client.get("/v1/profiles/" + "a" * 5000, headers=api.reader),
        await api.client.get(location, headers=_with_raw(api.reader, "If-None-Match", b"\xff" * 10)),
        await api.client.delete(location, headers={**api.writer, "If-Match": '"abc'}),
        await api.client.post("/v1/profiles", json={}, headers={**api.writer, "Idempotency-Key": "x" * 300}),
        await api.client.get("/v1/profiles", headers={"Authorization": "Bearer " + "k" * 10_000}),
        await api.client.get(
            "/v1/profiles", headers=_with_raw(api.reader, "Keel-Version", "\u00e9t\u00e9".encode("latin-1"))
        ),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_unstorable_values_are_422_on_every_write(api: Api) -> None:
    created = await api.client.post(
        "/v1/profiles",
        json={"handle": "valid_one", "emails": [{"address": "v@example.com", "primary": True}]},
        headers=api.writer,
    )
    location = created.headers["location"]
    merge = {**api.writer, "Content-Type": "application/merge-patch+json"}
    json_type = {**api.writer, "Content-Type": "application/json"}
    base = '{"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": true}]'
    hostile = {
        "NUL": '"display_name": "a\\u0000b"',
        "lone surrogate": '"bio": "\\ud800"',
        "NaN": '"attributes": {"x": NaN}',
        "Infinity": '"attributes": {"x": Infinity}',
        "NUL in a key": '"attributes": {"a\\u0000": 1}',
    }
    for name, field in hostile.items():
        post = await api.client.post("/v1/profiles", content=base + ", " + field + "}", headers=json_type)
        patch = await api.client.patch(location, content="{" + field + "}", headers=merge)
        for response in (post, patch):
            assert response.status_code in (400, 422), (name, response.status_code, response.text)
            assert response.headers["content-type"] == "application/problem+json"
    after = await api.client.get(location, headers=api.reader)
    assert after.status_code == 200
    assert after.json()["version"] == 1
