from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from keel.api.rest.app import build_rest_app
from keel.bootstrap import Keel, build_keel
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key
from tests.integration.conftest import truncate


@dataclass
class Api:
    client: httpx.AsyncClient
    keel: Keel
    writer: dict[str, str]
    reader: dict[str, str]
    admin: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_api(settings: Settings) -> tuple[Api, Keel]:
    keel = await build_keel(settings)
    app = build_rest_app(settings, keel.metrics)
    app.state.keel = keel
    tokens = {}
    for name, scopes in {
        "writer": [Scope.PROFILES_READ, Scope.PROFILES_WRITE],
        "reader": [Scope.PROFILES_READ],
        "admin": [Scope.ADMIN],
    }.items():
        issued = await issue_api_key(
            keel.local.store, keel.local.clock, scopes=scopes, api_version="2026-11-28", name=name
        )
        tokens[name] = bearer(issued.token)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://keel.test")
    return Api(client, keel, tokens["writer"], tokens["reader"], tokens["admin"]), keel


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    """Keel's REST app in process, over a migrated empty database of each kind."""
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    built, keel = await make_api(Settings(database_url=database_url))
    async with built.client:
        yield built
    await keel.close()
