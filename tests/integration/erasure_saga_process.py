"""An erasure runner in a process of its own that kills itself (SIGKILL) right after the step
`kill_after` committed, in the middle of its saga.

python -m tests.integration.erasure_saga_process DATABASE_URL KILL_AFTER CLOCK_START
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import datetime

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.domain.erasure import Erasure, ErasureStep
from keel.service.erasure import ErasureObserver, ErasureSagaRunner
from keel.storage.postgres.store import PostgresStore
from keel.storage.sqlite.store import SqliteStore
from tests.fakes import FakeClock
from tests.integration.conftest import observer


async def main(database_url: str, kill_after: ErasureStep, clock_start: datetime) -> None:
    store = await open_store(Settings(database_url=database_url), observer("erasure"))
    assert isinstance(store, SqliteStore | PostgresStore)  # the stores with the lifecycle tables

    def die_after(erasure: Erasure, step: ErasureStep) -> None:
        if step is kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    async def drop_cached(profile_id: str, version: int) -> None:
        return None  # no cache in this process

    runner = ErasureSagaRunner(
        store,
        FakeClock(clock_start),
        drop_cached,
        observer=ErasureObserver(step_done=die_after),
        holder="doomed-runner",
    )
    await runner.run_due()
    sys.exit("the runner was meant to die before finishing its saga")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], ErasureStep(sys.argv[2]), datetime.fromisoformat(sys.argv[3])))
