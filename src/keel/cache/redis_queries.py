"""GraphQL's automatic persisted queries shared by the fleet, on Redis: a query registered with
one process is found by every other (keel.api.graphql.persisted.SharedQueries).

Each query is one key, `keel:apq:<sha256>`, kept for `ttl_seconds` after it was last registered
or found (GETEX renews it; a client whose query expired registers it again, as the protocol has
it). Only queries that passed validation, the limits and the cost check are written, and only
for a caller with a valid key whose request was admitted (charged to its rate limit:
keel.api.graphql.http). What they take in Redis is bounded by those limits and the TTL, not by a
count: give Keel a Redis database with `maxmemory` and an eviction policy. Reads and writes are
bounded in time and never raise: Redis down is a miss.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from keel.observability.sampled_log import SampledLog

PREFIX = "keel:apq:"
_log = SampledLog("keel.graphql")


class RedisPersistedQueries:
    def __init__(self, client: Redis, *, ttl_seconds: int = 86_400, timeout_seconds: float = 0.05) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds

    @classmethod
    def from_url(cls, url: str) -> RedisPersistedQueries:
        return cls(Redis.from_url(url, socket_connect_timeout=1.0, health_check_interval=10))

    async def get(self, sha256: str) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._client.getex(PREFIX + sha256, ex=self._ttl)
        except Exception as error:  # noqa: BLE001 - a miss by contract
            _log.warning("persisted_query_lookup_failed", error=type(error).__name__)
            return None
        return value.decode() if isinstance(value, bytes) else None

    async def put(self, sha256: str, query: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(PREFIX + sha256, query, ex=self._ttl)
        except Exception as error:  # noqa: BLE001 - best effort by contract
            _log.warning("persisted_query_not_shared", error=type(error).__name__)

    async def close(self) -> None:
        await self._client.aclose()
