"""Operator-supplied attribute schemas through the REST API, private attributes included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keel.config import Settings
from tests.e2e.conftest import MODES, Api, make_api

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "plan": {"enum": ["free", "pro"]},
        "fraud_score": {"type": "number", "minimum": 0, "maximum": 1, "private": True},
    },
    "additionalProperties": False,
}


@pytest.fixture(params=MODES)
async def schema_api(sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    schema_file = tmp_path / "attributes.schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    api, deployment = await make_api(
        Settings(database_url=sqlite_url, attribute_schema=schema_file), request.param
    )
    async with api.client:
        yield api
    await deployment.close()


def _body(**attributes: object) -> dict[str, object]:
    return {
        "handle": "ada_l",
        "emails": [{"address": "ada@example.com", "primary": True}],
        "attributes": attributes,
    }


async def test_attributes_follow_the_schema(schema_api: Api) -> None:
    bad = await schema_api.client.post("/v1/profiles", json=_body(plan="gold"), headers=schema_api.writer)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "/attributes/plan"
    extra = await schema_api.client.post("/v1/profiles", json=_body(colour="red"), headers=schema_api.writer)
    assert extra.status_code == 422


async def test_private_attributes_are_for_admins_only(schema_api: Api) -> None:
    denied = await schema_api.client.post(
        "/v1/profiles", json=_body(plan="pro", fraud_score=0.2), headers=schema_api.writer
    )
    assert denied.status_code == 403
    created = await schema_api.client.post(
        "/v1/profiles", json=_body(plan="pro", fraud_score=0.2), headers=schema_api.admin
    )
    assert created.status_code == 201
    location = created.headers["location"]
    as_reader = await schema_api.client.get(location, headers=schema_api.reader)
    assert as_reader.json()["attributes"] == {"plan": "pro"}
    as_admin = await schema_api.client.get(location, headers=schema_api.admin)
    assert as_admin.json()["attributes"] == {"plan": "pro", "fraud_score": 0.2}
    # Two representations, two entity tags: a cache must not answer one with the other.
    assert as_admin.headers["etag"] != as_reader.headers["etag"]
    revalidated = await schema_api.client.get(
        location, headers={**schema_api.reader, "If-None-Match": as_admin.headers["etag"]}
    )
    assert revalidated.status_code == 200
    listed = await schema_api.client.get("/v1/profiles", headers=schema_api.reader)
    assert listed.json()["items"][0]["attributes"] == {"plan": "pro"}


async def test_readiness_reports_an_unmigrated_database(schema_api: Api, tmp_path: Path) -> None:
    from keel.bootstrap.core import SchemaNotCurrent
    from keel.bootstrap.lifecycle import build_services

    with pytest.raises(SchemaNotCurrent, match="keel migrate"):
        await build_services(Settings(database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}"))
    ready = await schema_api.client.get("/readyz")
    if schema_api.mode == "edge":
        # An edge has no database: it is ready when its core's health service says so.
        assert ready.json() == {
            "status": "ready",
            "checks": {"core": "serving", "edge_key": "accepted"},
            "breakers": {},
        }
        return
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "current"},
        "breakers": {"database": "closed", "database_jobs": "closed"},
    }


async def test_readiness_fails_when_the_schema_falls_behind(schema_api: Api, sqlite_url: str) -> None:
    import sqlite3

    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:
        connection.execute("DELETE FROM alembic_version")
    not_ready = await schema_api.client.get("/readyz")
    if schema_api.mode == "edge":
        # The core's health service follows its readiness at its next poll (every 2 s): wait
        # for that, bounded only against a hang.
        give_up = asyncio.get_running_loop().time() + 30.0
        while not_ready.status_code != 503 and asyncio.get_running_loop().time() < give_up:
            await asyncio.sleep(0.1)
            not_ready = await schema_api.client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"] == {"core": "not serving", "edge_key": "unknown"}
        return
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"] == {"database": "ok", "migrations": "at none"}
