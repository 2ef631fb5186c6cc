"""PostgreSQL streaming replicas that may serve reads, and how far each has replayed.

A watcher polls, every `poll_seconds`, the primary's WAL insert position and each replica's
replay position (`pg_last_wal_replay_lsn()`). From those:

- a replica that does not answer, or answers that it is not a standby (promoted, or a primary
  named by mistake), is *down* and skipped until a poll finds it back;
- its lag in seconds is how long ago the primary was at the oldest polled position the replica
  has not replayed (0 once it has replayed everything polled); a replica lagging more than
  `max_lag_seconds` is skipped;
- a read that must see position P (a consistency token, `keel.service.consistency`) goes to a
  replica only if its last polled replay position is at least P. Replay positions only grow, so
  a polled value is a safe lower bound for the read that follows.

Otherwise the read goes to the primary: a replica is an optimisation, never needed to answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import asyncpg
import structlog

from keel.observability.metrics import Metrics
from keel.observability.sampled_log import SampledLog

_Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

# Positions as integers: the bytes since 0/0 (what the consistency tokens carry).
PRIMARY_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
REPLAYED_POSITION = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
# How long a replica may take to hand over a connection before the read goes to the primary:
# well under a request's database deadline, so a replica that hangs costs a read this, not a 503.
ACQUIRE_SECONDS = 0.25

_log = structlog.get_logger("keel.replicas")
_poll_log = SampledLog("keel.replicas")


@dataclass(eq=False)
class Replica:
    name: str  # replica-N: its place in the settings; the URL may hold a password
    pool: _Pool
    up: bool = False  # until the first poll finds it a standby
    replayed: int = -1
    lag_seconds: float = float("inf")  # inf: not known (never polled, or behind every sample)
    lag_bytes: int = 0
    checked_at: float = float("-inf")  # when a poll last found it answering
    _said_down: bool = field(default=False, repr=False)


class Replicas:
    poll_seconds = 0.2
    # A read whose token no replica is known to have replayed asks for the next poll at once,
    # but polls come no closer together than this: the replica is usually milliseconds behind,
    # and a token's reads should not wait a whole poll to find it there.
    eager_poll_seconds = 0.02

    def __init__(
        self,
        replicas: Sequence[Replica],
        metrics: Metrics,
        *,
        max_lag_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.members = list(replicas)
        self._metrics = metrics
        self._max_lag = max_lag_seconds
        self._clock = clock
        # The primary's positions, long enough to date any lag up to the bound (and a little
        # more): a replica behind every sample has a lag not known, so it serves nothing.
        samples = math.ceil(max_lag_seconds / self.poll_seconds) + 10
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=samples)
        self._turn = itertools.count()
        self._wanted = asyncio.Event()
        self._routed = {
            server: metrics.replica_routed_reads.labels(server) for server in ("replica", "primary")
        }
        for replica in self.members:
            self._publish(replica)

    def choose(self, required: int | None) -> Replica | None:
        """A replica to serve a read that must see `required` (None: no token), taking turns;
        None: the primary must. A replica's lag counts the time since its last good poll too,
        so a watcher that stalls (or a primary it cannot poll) stops the reads, not freezes
        them on what was last seen."""
        now = self._clock()
        current = [
            replica
            for replica in self.members
            if replica.up and replica.lag_seconds + (now - replica.checked_at) <= self._max_lag
        ]
        usable = [r for r in current if required is None or r.replayed >= required]
        if not usable:
            if current:
                self._wanted.set()  # maybe there by now: poll without waiting the whole interval
            return None
        return usable[next(self._turn) % len(usable)]

    def count(self, server: str) -> None:
        """Where a read a replica could have served went: `replica` or `primary`."""
        self._routed[server].inc()

    def suspend(self, replica: Replica, reason: str) -> None:
        """A read on `replica` failed: skip it until a poll finds it answering again."""
        self._down(replica, reason)

    async def poll(self, primary: _Pool) -> None:
        """One round: the primary's position, then each replica's (in parallel), each bounded
        whole (a connection to open included)."""
        async with asyncio.timeout(self.poll_seconds * 5):
            position = int(await primary.fetchval(PRIMARY_POSITION))
        self._samples.append((self._clock(), position))
        await asyncio.gather(*(self._poll_replica(replica) for replica in self.members))

    async def watch(self, primary: _Pool, each_round: Callable[[], Awaitable[None]]) -> None:
        """Poll until cancelled, and run `each_round` after each poll. A primary that does not
        answer leaves the replicas' positions as they were; their lag grows by the time since."""
        while True:
            try:
                await self.poll(primary)
            except Exception as error:  # noqa: BLE001 - a failed round is retried at the next
                _poll_log.warning("replica_poll_failed", error=type(error).__name__)
            try:
                await each_round()
            except Exception as error:  # noqa: BLE001
                _poll_log.warning("layout_refresh_failed", error=type(error).__name__)
            await asyncio.sleep(self.eager_poll_seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds - self.eager_poll_seconds):
                    await self._wanted.wait()
            self._wanted.clear()

    async def close(self) -> None:
        for replica in self.members:
            with contextlib.suppress(Exception):
                await replica.pool.close()

    async def _poll_replica(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self.poll_seconds * 5):
                replayed = await replica.pool.fetchval(REPLAYED_POSITION)
        except Exception as error:  # noqa: BLE001 - whatever failed, the replica is not serving
            self._down(replica, type(error).__name__)
            return
        if replayed is None:
            self._down(replica, "not a standby (pg_last_wal_replay_lsn() is null)")
            return
        replica.replayed = max(replica.replayed, int(replayed))
        behind = [at for at, position in self._samples if position > replica.replayed]
        now = self._clock()
        if behind and len(behind) == len(self._samples):
            replica.lag_seconds = float("inf")  # behind every position kept: not known how far
        else:
            replica.lag_seconds = now - behind[0] if behind else 0.0
        replica.checked_at = now
        replica.lag_bytes = max(0, self._samples[-1][1] - replica.replayed) if self._samples else 0
        if not replica.up:
            _log.info("replica_up", replica=replica.name)
        replica.up = True
        replica._said_down = False
        self._publish(replica)

    def _down(self, replica: Replica, reason: str) -> None:
        if not replica._said_down:
            _log.warning("replica_down", replica=replica.name, reason=reason)
            replica._said_down = True
        replica.up = False
        self._publish(replica)

    def _publish(self, replica: Replica) -> None:
        self._metrics.replica_up.labels(replica.name).set(1 if replica.up else 0)
        lag = replica.lag_seconds if replica.lag_seconds != float("inf") else -1
        self._metrics.replica_lag_seconds.labels(replica.name).set(lag)
        self._metrics.replica_lag_bytes.labels(replica.name).set(replica.lag_bytes)


async def open_replicas(
    urls: Sequence[str],
    metrics: Metrics,
    *,
    max_lag_seconds: float,
    max_size: int,
    command_timeout: float,
    reset: Callable[[asyncpg.Connection], Awaitable[None]],
) -> Replicas:
    """Pools to `urls`, opened lazily: a replica down at start-up is only skipped."""
    members = [
        Replica(
            f"replica-{index}",
            asyncpg.create_pool(
                url,
                min_size=0,
                max_size=max_size,
                command_timeout=command_timeout,
                timeout=1.0,
                reset=reset,  # the primary pool's: no reset round trip per read
            ),
        )
        for index, url in enumerate(urls)
    ]
    for member in members:
        await member.pool  # min_size=0: opens no connection, so it cannot fail on a dead replica
    return Replicas(members, metrics, max_lag_seconds=max_lag_seconds)
