"""The four combinations every GraphQL end-to-end test runs in: SQLite or PostgreSQL (the
`database_url` fixture), as a monolith or as an edge in front of a core over gRPC (`MODES`).
Tests that need their own settings build their Keel here, on an empty database.

Each runs on the profiles' layout KEEL_STORAGE_LAYOUT names (normalized when unset): the test
databases record it (tests/conftest.py) and every `Settings` built here reads it, so
`KEEL_STORAGE_LAYOUT=document pytest tests/e2e` is the end-to-end suite on the document layout."""

from __future__ import annotations

from keel.config import Settings
from tests.e2e.conftest import Api, Deployment, make_api
from tests.integration.conftest import truncate


async def fresh_api(settings: Settings, mode: str) -> tuple[Api, Deployment]:
    """`make_api` over `settings.database_url` emptied first: the PostgreSQL database is shared
    by the session, where SQLite's is a new file per test."""
    if settings.database_url.startswith("postgresql"):
        await truncate(settings.database_url)
    return await make_api(settings, mode)
