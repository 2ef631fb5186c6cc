"""Cross-process cache invalidation over Redis pub/sub (one `RedisChannel`).

A message lost to a process (it was disconnected) is reported as a gap, and the process drops its
whole cache: after a Redis outage every process starts cold rather than serving copies that may
have been replaced. While Redis is down, publishing fails fast and is counted: other processes
then serve a replaced copy for at most one freshness period.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from keel.cache.redis_channel import RedisChannel

CHANNEL = "keel:profiles:changed"


class RedisInvalidationBus:
    def __init__(
        self,
        client: Redis,
        *,
        publish_timeout_seconds: float = 0.05,
        reconnect_seconds: float = 1.0,
        on_publish_failure: Callable[[], None] | None = None,
    ) -> None:
        self._channel = RedisChannel(
            client,
            CHANNEL,
            "cache_invalidation",
            publish_timeout_seconds=publish_timeout_seconds,
            reconnect_seconds=reconnect_seconds,
            on_publish_failure=on_publish_failure,
        )

    @classmethod
    def from_url(
        cls, url: str, *, on_publish_failure: Callable[[], None] | None = None
    ) -> RedisInvalidationBus:
        client = Redis.from_url(url, socket_connect_timeout=1.0, health_check_interval=10)
        return cls(client, on_publish_failure=on_publish_failure)

    async def publish(self, profile_id: str, version: int) -> bool:
        return await self._channel.publish(f"{profile_id} {version}") is not None

    async def listen(self, on_change: Callable[[str, int], None], on_gap: Callable[[], None]) -> None:
        def deliver(message: str) -> None:
            profile_id, _, version = message.partition(" ")
            if version.isdigit():
                on_change(profile_id, int(version))

        await self._channel.listen(deliver, on_gap)

    async def close(self) -> None:
        await self._channel.close()
