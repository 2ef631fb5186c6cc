"""One Redis pub/sub channel between Keel processes: short text messages, best effort.

Pub/sub delivers at most once: a message sent while a process is disconnected is lost to it.
So each (re)subscription reports a gap (`on_gap`) once Redis has confirmed it, and the listener
drops everything the messages would have corrected. A subscription can also die without an
error (a connection a NAT or a load balancer forgot: reads just wait), so the listener pings
Redis on the subscription's own connection every `probe_interval` seconds; a pong that has not
come back within `probe_timeout` (read after everything already received) ends the
subscription, as an error would: a gap, then a new subscription. Publishing is bounded in time
and never raises: it says how many subscribers received the message (None: it did not reach
Redis). Two channels use it: profile-cache invalidations (keel.cache.redis_bus) and API-key
revocations (keel.cache.redis_key_revocations).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

_log = structlog.get_logger("keel.cache")


class SubscriptionLost(ConnectionError):
    """The listener's ping on its subscription got no answer: the subscription no longer delivers."""


class RedisChannel:
    def __init__(
        self,
        client: Redis,
        channel: str,
        name: str,
        *,
        publish_timeout_seconds: float = 0.05,
        reconnect_seconds: float = 1.0,
        probe_interval: float = 15.0,
        probe_timeout: float = 5.0,
        on_publish_failure: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._name = name  # the log events': `<name>_not_published`, `<name>_listener_lost`
        self._publish_timeout = publish_timeout_seconds
        self._reconnect = reconnect_seconds
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._on_publish_failure = on_publish_failure

    async def publish(self, message: str) -> int | None:
        """How many subscribers received `message`; None when it did not reach Redis."""
        try:
            async with asyncio.timeout(self._publish_timeout):
                receivers = await self._client.publish(self._channel, message)
        except Exception as error:  # noqa: BLE001 - best effort by contract; also the driver's
            # RuntimeErrors on a transport the server closed under it (a killed Redis).
            if self._on_publish_failure is not None:
                self._on_publish_failure()
            _log.warning(f"{self._name}_not_published", error=type(error).__name__)
            return None
        return int(receivers)

    async def listen(self, on_message: Callable[[str], None], on_gap: Callable[[], None]) -> None:
        """Deliver every message until cancelled; `on_gap` on each (re)subscription and each
        subscription lost."""
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    async with asyncio.timeout(self._probe_timeout):
                        await pubsub.subscribe(self._channel)
                        await self._confirmed(pubsub)
                    on_gap()  # anything published before this subscription is lost to us
                    await self._receive(pubsub, on_message)
            except Exception as error:  # noqa: BLE001 - the listener outlives any failure: a gap
                _log.warning(f"{self._name}_listener_lost", error=type(error).__name__)
                on_gap()
            await asyncio.sleep(self._reconnect)

    @staticmethod
    async def _confirmed(pubsub: PubSub) -> None:
        """Until Redis confirms the subscription (`subscribe` only sends the command)."""
        while True:
            message = await pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "subscribe":
                return

    async def _receive(self, pubsub: PubSub, on_message: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        awaited: str | None = None  # the ping on its way, and when it was sent
        sent_at = 0.0
        next_probe = loop.time() + self._probe_interval

        def take(message: dict[str, Any] | None) -> None:
            nonlocal awaited
            if message is None:
                return
            data = message.get("data")
            text = data.decode("ascii", "replace") if isinstance(data, bytes) else None
            if message["type"] == "message" and text is not None:
                on_message(text)
            elif message["type"] == "pong" and text == awaited:
                awaited = None

        while True:
            take(await pubsub.get_message(timeout=0.5))
            now = loop.time()
            if awaited is not None and now - sent_at > self._probe_timeout:
                # What a stalled event loop left unread first: the pong may be among it.
                while (message := await pubsub.get_message(timeout=0)) is not None:
                    take(message)
                if awaited is not None:
                    raise SubscriptionLost(f"the ping sent {now - sent_at:.1f} s ago got no answer")
            if awaited is None and now >= next_probe:
                awaited, sent_at, next_probe = uuid.uuid4().hex, now, now + self._probe_interval
                async with asyncio.timeout(self._probe_timeout):
                    await pubsub.ping(awaited)

    async def close(self) -> None:
        await self._client.aclose()
