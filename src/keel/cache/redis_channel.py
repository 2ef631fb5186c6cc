"""One Redis pub/sub channel between Keel processes: short text messages, best effort.

Pub/sub delivers at most once: a message sent while a process is disconnected is lost to it.
So each (re)subscription reports a gap (`on_gap`), and the listener drops everything the
messages would have corrected. Publishing is bounded in time (a short timeout) and never raises:
it says whether the message reached Redis. Two channels use it: profile-cache invalidations
(keel.cache.redis_bus) and API-key revocations (keel.cache.redis_key_revocations).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

_log = structlog.get_logger("keel.cache")


class RedisChannel:
    def __init__(
        self,
        client: Redis,
        channel: str,
        name: str,
        *,
        publish_timeout_seconds: float = 0.05,
        reconnect_seconds: float = 1.0,
        on_publish_failure: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._name = name  # the log events': `<name>_not_published`, `<name>_listener_lost`
        self._publish_timeout = publish_timeout_seconds
        self._reconnect = reconnect_seconds
        self._on_publish_failure = on_publish_failure

    async def publish(self, message: str) -> bool:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._client.publish(self._channel, message)
        except Exception as error:  # noqa: BLE001 - best effort by contract; also the driver's
            # RuntimeErrors on a transport the server closed under it (a killed Redis).
            if self._on_publish_failure is not None:
                self._on_publish_failure()
            _log.warning(f"{self._name}_not_published", error=type(error).__name__)
            return False
        return True

    async def listen(self, on_message: Callable[[str], None], on_gap: Callable[[], None]) -> None:
        """Deliver every message until cancelled; `on_gap` on each (re)subscription."""
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    on_gap()  # anything published before this subscription is lost to us
                    async for message in pubsub.listen():
                        data = message.get("data")
                        if isinstance(data, bytes):
                            on_message(data.decode("ascii", "replace"))
            except (RedisError, OSError) as error:
                _log.warning(f"{self._name}_listener_lost", error=type(error).__name__)
                on_gap()
            await asyncio.sleep(self._reconnect)

    async def close(self) -> None:
        await self._client.aclose()
