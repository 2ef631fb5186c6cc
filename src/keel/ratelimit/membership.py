"""How many Keel processes share the quotas now, from their heartbeats on Redis.

Every serving process (each worker of each node, core or edge) adds itself to one sorted set
every `interval` seconds, scored by Redis's own clock (no node's clock is trusted), drops the
members silent for longer than `ttl`, and reads how many are left: one Lua script, one round
trip. The last count read is what the process divides by:

the rate-limit quotas while Redis is down (`FailOpenRateLimiter`: the fleet as a whole then
still admits about one quota; the count from before the outage is the one used).

A count that falls is believed only once it has stayed lower for `ttl`: a Redis restarted empty,
or a first heartbeat after a long outage that finds every other member expired, would otherwise
have each process believe it is alone, and admit the whole quota, until the others beat again.
A count that rises is believed at once.

The configured count (`KEEL_RATELIMIT_NODES` × workers, 1 by default) is a floor: the count is
never below it (an operator may know the fleet's least size; a chaos experiment makes one
process act as one of many), and stands alone until the first heartbeat is answered. A process
leaving removes itself; one killed is dropped after `ttl`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable

import structlog
from redis.asyncio import Redis

KEY = "keel:fleet:processes"
_HEARTBEAT = """
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], seconds, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', seconds - ttl)
redis.call('EXPIRE', KEYS[1], math.ceil(ttl * 3))
return redis.call('ZCARD', KEYS[1])
"""
_log = structlog.get_logger("keel.ratelimit")


class FleetMembership:
    def __init__(
        self,
        client: Redis,
        *,
        configured: int,
        interval: float = 2.0,
        ttl: float = 10.0,
        on_count: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._script = client.register_script(_HEARTBEAT)
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._interval = interval
        self._ttl = ttl
        self._on_count = on_count
        self._floor = max(1, configured)
        self._processes = self._floor
        self._failing = False
        self._joined = False
        self._clock = clock
        self._lower_since: float | None = None  # when the counts read began to be lower
        if on_count is not None:
            on_count(self._processes)

    def processes(self) -> int:
        """The live processes as last seen, never fewer than the configured floor."""
        return self._processes

    async def beat(self) -> int:
        """One heartbeat: this process is in, the silent ones out; the count."""
        count = max(self._floor, int(await self._script(keys=[KEY], args=[self.member, self._ttl])))
        self._joined = True
        now = self._clock()
        if count >= self._processes:
            self._processes, self._lower_since = count, None
        elif self._lower_since is None:
            self._lower_since = now  # lower: believed once it stays so for `ttl`
        elif now - self._lower_since >= self._ttl:
            self._processes, self._lower_since = count, None
        if self._on_count is not None:
            self._on_count(self._processes)
        return self._processes

    async def run(self) -> None:
        """Heartbeats until cancelled; Redis unreachable keeps the last count (logged once)."""
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self.beat()
            except Exception as error:  # noqa: BLE001 - the heartbeat outlives any failure (the
                # driver raises RuntimeError on a transport a killed Redis closed)
                if not self._failing:
                    _log.warning(
                        "fleet_heartbeat_failed", error=type(error).__name__, processes=self._processes
                    )
                self._failing = True
            else:
                if self._failing:
                    _log.info("fleet_heartbeat_recovered", processes=self._processes)
                self._failing = False
            await asyncio.sleep(self._interval)

    async def leave(self) -> None:
        """Best effort, on the way out: the others count one fewer at their next heartbeat."""
        if not self._joined:  # never counted (a command-line process): nothing to take back
            await self._client.aclose()
            return
        try:
            async with asyncio.timeout(1.0):
                await self._client.zrem(KEY, self.member)
        except Exception:  # noqa: BLE001, S110 - dropped after `ttl` instead
            pass
        await self._client.aclose()
