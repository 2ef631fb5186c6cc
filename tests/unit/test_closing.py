"""Closing a process's clients: every closer runs, also after one failed, and the first failure
is raised once all have run (`keel.bootstrap.container.close_all`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from keel.bootstrap.container import close_all


async def test_every_closer_runs_and_the_first_failure_is_raised_after_them() -> None:
    ran: list[str] = []

    def closer(name: str, fails: bool = False) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            ran.append(name)
            if fails:
                raise ConnectionError(name)

        return close

    with pytest.raises(ConnectionError, match="redis"):
        await close_all([closer("redis", fails=True), closer("nats", fails=True), closer("database")])
    assert ran == ["redis", "nats", "database"]
    ran.clear()
    await close_all([closer("database")])
    assert ran == ["database"]
