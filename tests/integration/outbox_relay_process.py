"""A relay in a process of its own that kills itself (SIGKILL) right after the bus acknowledged
its `kill_after`-th publish: after publishing, before marking anything published.

python -m tests.integration.outbox_relay_process DATABASE_URL NATS_URL STREAM KILL_AFTER
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.events.jetstream import JetStreamPublisher, StreamSpec
from keel.service.clock import SystemClock
from keel.service.outbox import OutboxRelay, RelayPolicy
from tests.integration.conftest import observer

LEASE_SECONDS = 30.0  # far longer than the test: the lease is only freed by the test's clock


class DiesAfter:
    def __init__(self, inner: JetStreamPublisher, acknowledged: int) -> None:
        self._inner = inner
        self._left = acknowledged

    async def publish(
        self, subject: str, message_id: str, payload: bytes, traceparent: str | None = None
    ) -> int | None:
        position = await self._inner.publish(subject, message_id, payload, traceparent)
        self._left -= 1
        if self._left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return position

    async def erase(self, copies: tuple[tuple[int, str], ...]) -> None:
        await self._inner.erase(copies)

    async def close(self) -> None:
        await self._inner.close()


async def main(database_url: str, nats_url: str, stream: str, kill_after: int) -> None:
    store = await open_store(Settings(database_url=database_url), observer("relay"))
    publisher = JetStreamPublisher(nats_url, StreamSpec(name=stream), timeout_seconds=2.0)
    relay = OutboxRelay(
        store,
        DiesAfter(publisher, kill_after),
        SystemClock(),
        RelayPolicy(lease_seconds=LEASE_SECONDS, batch_size=1000),
        holder="doomed-relay",
    )
    await relay.run_once()
    sys.exit("the relay was meant to die before finishing its batch")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
