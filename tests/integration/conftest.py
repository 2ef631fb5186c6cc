from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from keel.config import Settings
from keel.observability.database import DatabaseObserver
from keel.observability.metrics import Metrics
from keel.observability.tracing import build_tracer_provider, tracer_from
from keel.service.ports import Store
from tests.conftest import environment_layout

TABLES = (
    "profiles, profile_emails, profile_links, api_keys, idempotency_keys, event_outbox, event_relay_lease,"
    " webhook_endpoints, webhook_deliveries, profile_documents, profile_document_emails,"
    " profile_erasures, profile_tombstones, erasure_acknowledgements, admin_audit, profile_subjects"
)


def observer(system: str) -> DatabaseObserver:
    provider = build_tracer_provider(
        exporter="none", sampling_ratio=1.0, otlp_endpoint=None, service_name="t"
    )
    return DatabaseObserver(Metrics(), tracer_from(provider), system)


async def truncate(url: str, layout: str | None = None) -> None:
    """Empty the session's PostgreSQL database and record `layout` (default: the suite's, see
    tests/conftest.py) as its profiles' layout, as `keel migrate` records it on an empty one."""
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.execute(f"TRUNCATE {TABLES} CASCADE")
            await connection.execute(
                "UPDATE storage_layout SET read_layout = $1, phase = 'steady', target_layout = NULL"
                " WHERE name = 'profiles'",
                layout or environment_layout(),
            )
    finally:
        await connection.close()


@pytest.fixture
async def store(database_url: str, storage_layout: str) -> AsyncIterator[Store]:
    from keel.bootstrap.core import open_store

    if database_url.startswith("postgresql"):
        await truncate(database_url, storage_layout)
    settings = Settings(database_url=database_url, storage_layout=storage_layout)
    opened = await open_store(settings, observer("test"))
    yield opened
    await opened.close()
