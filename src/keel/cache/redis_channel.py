"""One Redis pub/sub channel between Keel processes: short text messages, best effort.

Pub/sub delivers at most once: a message sent while a process is disconnected is lost to it.
So each (re)subscription reports a gap (`on_gap`), and the listener drops everything the
messages would have corrected. A subscription can also die without an error (a connection a
NAT or a load balancer forgot: reads just wait), so the listener sends itself a probe on the
channel every `probe_interval` seconds; one that has not come back within `probe_timeout` ends
the subscription, as an error would: a gap, then a new subscription. Publishing is bounded in
time and never raises: it says how many subscribers received the message (None: it did not
reach Redis). Two channels use it: profile-cache invalidations (keel.cache.redis_bus) and API-key
revocations (keel.cache.redis_key_revocations).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

_log = structlog.get_logger("keel.cache")
_PROBE = "!probe "  # no profile id, version or key id starts so


class SubscriptionLost(ConnectionError):
    """The listener's own probe did not come back: the subscription no longer delivers."""


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
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    async with asyncio.timeout(self._probe_timeout):
                        await pubsub.subscribe(self._channel)
                    on_gap()  # anything published before this subscription is lost to us
                    await self._receive(pubsub, on_message)
            except Exception as error:  # noqa: BLE001 - the listener outlives any failure: a gap
                _log.warning(f"{self._name}_listener_lost", error=type(error).__name__)
                on_gap()
            await asyncio.sleep(self._reconnect)

    async def _receive(self, pubsub: PubSub, on_message: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        awaited: str | None = None  # the probe on its way, and when it was sent
        sent_at = 0.0
        next_probe = loop.time()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            data = message.get("data") if message is not None else None
            if isinstance(data, bytes):
                text = data.decode("ascii", "replace")
                if not text.startswith(_PROBE):
                    on_message(text)
                elif text == awaited:
                    awaited = None
            now = loop.time()
            if awaited is not None and now - sent_at > self._probe_timeout:
                raise SubscriptionLost(f"the probe sent {now - sent_at:.1f} s ago did not come back")
            if awaited is None and now >= next_probe:
                awaited, sent_at, next_probe = f"{_PROBE}{uuid.uuid4().hex}", now, now + self._probe_interval
                async with asyncio.timeout(self._probe_timeout):
                    await self._client.publish(self._channel, awaited)

    async def close(self) -> None:
        await self._client.aclose()
