"""API-key revocations pushed to every Keel process over Redis pub/sub (one `RedisChannel`), so
that a revoked key stops working everywhere at once instead of when each process's key cache
expires (`KEEL_API_KEY_CACHE_SECONDS`, which stays the bound when a message is lost).

A process that missed messages (a reconnection) forgets every key it had cached: the next
request of each key is checked against the database again.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from keel.cache.redis_channel import RedisChannel

CHANNEL = "keel:keys:revoked"


class RedisKeyRevocations:
    def __init__(self, client: Redis, *, publish_timeout_seconds: float = 0.5) -> None:
        # Published once per revocation, by an operator: a longer bound than a cache
        # invalidation's, which is on a write's path.
        self._channel = RedisChannel(
            client, CHANNEL, "key_revocation", publish_timeout_seconds=publish_timeout_seconds
        )

    @classmethod
    def from_url(cls, url: str) -> RedisKeyRevocations:
        return cls(Redis.from_url(url, socket_connect_timeout=1.0, health_check_interval=10))

    async def publish(self, key_id: str) -> int | None:
        return await self._channel.publish(key_id)

    async def listen(self, on_revoked: Callable[[str], None], on_gap: Callable[[], None]) -> None:
        await self._channel.listen(on_revoked, on_gap)

    async def close(self) -> None:
        await self._channel.close()
