"""Cross-process cache invalidation over Redis pub/sub.

Pub/sub delivers at most once: a message sent while a process is disconnected is lost to it.
So each (re)subscription reports a gap, and the process drops its whole cache: after a Redis
outage every process starts cold rather than serving copies that may have been replaced.
While Redis is down, publishing fails fast (a short timeout) and is counted: other processes
then serve a replaced copy for at most one freshness period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

CHANNEL = "keel:profiles:changed"
_log = structlog.get_logger("keel.cache")


class RedisInvalidationBus:
    def __init__(
        self,
        client: Redis,
        *,
        publish_timeout_seconds: float = 0.05,
        reconnect_seconds: float = 1.0,
        on_publish_failure: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._publish_timeout = publish_timeout_seconds
        self._reconnect = reconnect_seconds
        self._on_publish_failure = on_publish_failure

    @classmethod
    def from_url(
        cls, url: str, *, on_publish_failure: Callable[[], None] | None = None
    ) -> RedisInvalidationBus:
        client = Redis.from_url(url, socket_connect_timeout=1.0, health_check_interval=10)
        return cls(client, on_publish_failure=on_publish_failure)

    async def publish(self, profile_id: str, version: int) -> bool:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._client.publish(CHANNEL, f"{profile_id} {version}")
        except Exception as error:  # noqa: BLE001 - best effort by contract; also the driver's
            # RuntimeErrors on a transport the server closed under it (a killed Redis).
            if self._on_publish_failure is not None:
                self._on_publish_failure()
            _log.warning("cache_invalidation_not_published", error=type(error).__name__)
            return False
        return True

    async def listen(self, on_change: Callable[[str, int], None], on_gap: Callable[[], None]) -> None:
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    on_gap()  # anything published before this subscription is lost to us
                    async for message in pubsub.listen():
                        _deliver(message, on_change)
            except (RedisError, OSError) as error:
                _log.warning("cache_invalidation_listener_lost", error=type(error).__name__)
                on_gap()
            await asyncio.sleep(self._reconnect)

    async def close(self) -> None:
        await self._client.aclose()


def _deliver(message: dict[str, object], on_change: Callable[[str, int], None]) -> None:
    data = message.get("data")
    if not isinstance(data, bytes):
        return
    profile_id, _, version = data.decode("ascii", "replace").partition(" ")
    if version.isdigit():
        on_change(profile_id, int(version))
