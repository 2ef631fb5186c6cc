"""API keys administered over REST (`/v1/keys`, `/v1/audit`), as clients see it: a key created
with an admin key works at once and its token is shown once; a change of scopes, a rotation, an
expiry and a revocation apply on the next request; an edge refuses these routes (its core
administers keys); and on two served nodes sharing Redis, with keys cached for an hour, a change
made on one node applies on the other as soon as it is pushed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from testkit.health import until
from testkit.processes import keel_nodes, keel_output

from keel.api.application import build_http_app
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key
from tests.e2e.conftest import bearer, deploy

MISSING = "eu1_01M977N90FNC0XW4XT2ZE1XM79"
WAIT = 30.0  # an upper bound, far above what the push takes and far below the key cache's hour


class Keel:
    def __init__(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        self.client = client
        self.admin = admin

    async def create(self, **fields: object) -> dict[str, object]:
        answer = await self.client.post(
            "/v1/keys", json={"name": "app", "scopes": ["profiles:read"], **fields}, headers=self.admin
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["location"] == f"/v1/keys/{answer.json()['id']}"
        created: dict[str, object] = answer.json()
        return created

    async def read_status(self, token: object) -> int:
        """A read of a profile that does not exist: 404 while the key may read, 403 when it may
        not, 401 once it is not accepted."""
        answer = await self.client.get(f"/v1/profiles/{MISSING}", headers=bearer(str(token)))
        return answer.status_code


async def _keel(sqlite_url: str, mode: str) -> AsyncIterator[Keel]:
    deployment = await deploy(Settings(database_url=sqlite_url, ratelimit_enabled=False), mode)
    app = build_http_app(deployment.serving.settings, deployment.serving.metrics)
    app.state.services = deployment.serving
    core = deployment.core.local
    admin = await issue_api_key(
        core.store, core.clock, scopes=[Scope.ADMIN], api_version="2026-11-28", name="ops"
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://keel.test"
    ) as client:
        yield Keel(client, bearer(admin.token))
    await deployment.close()


@pytest.fixture
async def keel(sqlite_url: str) -> AsyncIterator[Keel]:
    async for served in _keel(sqlite_url, "monolith"):
        yield served


@pytest.fixture
async def edge(sqlite_url: str) -> AsyncIterator[Keel]:
    async for served in _keel(sqlite_url, "edge"):
        yield served


async def test_an_edge_refuses_key_administration_its_core_does(edge: Keel) -> None:
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("GET", "/v1/audit")):
        answer = await edge.client.request(method, path, headers=edge.admin, json={})
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == "application/problem+json"


async def test_a_created_key_works_at_once_and_its_token_is_shown_once(keel: Keel) -> None:
    client = keel
    created = await client.create()
    assert await client.read_status(created["token"]) == 404
    listed = (await client.client.get("/v1/keys", headers=client.admin)).json()["items"]
    assert created["id"] in [k["id"] for k in listed]
    assert all("token" not in k for k in listed)  # shown once, in the create's answer only


async def test_each_change_applies_on_the_next_request(keel: Keel) -> None:
    client = keel
    created = await client.create(scopes=["profiles:read", "profiles:write"])
    key = f"/v1/keys/{created['id']}"
    token = created["token"]
    assert await client.read_status(token) == 404  # cached now
    taken = await client.client.patch(key, json={"scopes": ["profiles:write"]}, headers=client.admin)
    assert taken.status_code == 200
    assert taken.json()["scopes"] == ["profiles:write"]
    assert await client.read_status(token) == 403
    await client.client.patch(key, json={"scopes": ["profiles:read"]}, headers=client.admin)
    # Rotated with an hour's grace: both secrets work; rotated again without: only the newest.
    rotated = await client.client.post(
        f"{key}/rotate", json={"previous_secret_valid_seconds": 3600}, headers=client.admin
    )
    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    assert rotated.json()["previous_secret_expires_at"] is not None
    second = rotated.json()["token"]
    assert [await client.read_status(t) for t in (token, second)] == [404, 404]
    third = (
        await client.client.post(
            f"{key}/rotate", json={"previous_secret_valid_seconds": 0}, headers=client.admin
        )
    ).json()["token"]
    assert [await client.read_status(t) for t in (token, second, third)] == [401, 401, 404]
    expired = await client.client.post(f"{key}/expire", headers=client.admin)
    assert expired.json()["state"] == "expired"
    assert await client.read_status(third) == 401
    other = await client.create()
    assert (await client.client.delete(f"/v1/keys/{other['id']}", headers=client.admin)).status_code == 204
    assert await client.read_status(other["token"]) == 401
    audit = (await client.client.get(f"/v1/audit?key_id={created['id']}", headers=client.admin)).json()
    assert [e["action"] for e in audit["items"]] == [
        "key.expired",
        "key.rotated",
        "key.rotated",
        "key.updated",
        "key.updated",
        "key.created",
    ]
    assert all(str(t) not in str(audit) for t in (token, second, third))


async def test_a_key_without_admin_learns_nothing(keel: Keel) -> None:
    client = keel
    created = await client.create(scopes=["profiles:read", "profiles:write"])
    caller = bearer(str(created["token"]))
    for method, path in (
        ("GET", "/v1/keys"),
        ("GET", f"/v1/keys/{created['id']}"),
        ("GET", "/v1/keys/aaaaaaaaaaaaaaaa"),
        ("DELETE", f"/v1/keys/{created['id']}"),
        ("GET", "/v1/audit"),
    ):
        answer = await client.client.request(method, path, headers=caller)
        assert answer.status_code == 403, (method, path, answer.text)
    answer = await client.client.get("/v1/keys")
    assert answer.status_code == 401


def test_a_change_on_one_node_applies_on_the_other_as_soon_as_pushed(tmp_path: Path, redis_url: str) -> None:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_API_KEY_CACHE_SECONDS": "3600",  # only a push can make a node drop a cached key
        "KEEL_WORKERS": "1",
        "KEEL_REDIS_URL": redis_url,
    }
    keel_output(env, "migrate")
    admin = bearer(keel_output(env, "keys", "create", "--scopes", "admin", "--quiet").strip())
    with keel_nodes(2, env, tmp_path) as (first, second):
        created = httpx.post(
            f"{first}/v1/keys", json={"name": "app", "scopes": ["profiles:read"]}, headers=admin, timeout=10
        ).json()
        token = bearer(created["token"])

        def status() -> int:
            return httpx.get(f"{second}/v1/profiles/{MISSING}", headers=token, timeout=10).status_code

        assert status() == 404  # cached on the second node for an hour
        changed = httpx.patch(
            f"{first}/v1/keys/{created['id']}", json={"scopes": ["profiles:write"]}, headers=admin, timeout=10
        )
        assert changed.status_code == 200
        until(lambda: status() == 403, "the second node applies the new scopes", timeout=WAIT)
        assert (
            httpx.post(f"{first}/v1/keys/{created['id']}/expire", headers=admin, timeout=10).status_code
            == 200
        )
        until(lambda: status() == 401, "the second node refuses the expired key", timeout=WAIT)


def test_keys_made_and_revoked_with_the_cli_are_in_the_audit_log(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}", "KEEL_WORKERS": "1"}
    keel_output(env, "migrate")
    admin = keel_output(env, "keys", "create", "--scopes", "admin", "--name", "ops", "--quiet").strip()
    app = keel_output(env, "keys", "create", "--name", "app", "--quiet").strip().split("_")[1]
    keel_output(env, "keys", "revoke", app)
    with keel_nodes(1, env, tmp_path) as (node,):
        answer = httpx.get(f"{node}/v1/audit", headers=bearer(admin), timeout=10)
    assert answer.status_code == 200
    entries = [(e["actor"], e["action"], e["key_id"]) for e in answer.json()["items"]]
    assert entries == [  # newest first
        ("cli", "key.revoked", app),
        ("cli", "key.created", app),
        ("cli", "key.created", admin.split("_")[1]),
    ]
    created = answer.json()["items"][1]["detail"]
    assert (created["name"], created["plan"]) == ("app", "standard")
    assert created["scopes"] == ["profiles:read", "profiles:write"]  # the CLI's default
