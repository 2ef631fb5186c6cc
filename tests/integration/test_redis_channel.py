"""The pub/sub channel between Keel processes (keel.cache.redis_channel) on a real Redis, with the
fault proxy between the listener and Redis: a subscription that silently stops delivering (a
partition that leaves the connection open, as a forgetful NAT does) is noticed by the listener's
ping on the subscription's connection, reported as a gap, and replaced once the network heals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

from redis.asyncio import Redis
from testkit.faultproxy import FaultProxy, Faults

from keel.cache.redis_channel import RedisChannel

BOUND = 30.0  # far above the probe's timing below
CHANNEL = "keel:test:channel"


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(int(BOUND / 0.02)):  # bounded by count
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {BOUND} s")


async def _delivered(publisher: RedisChannel, received: list[str], text: str) -> None:
    """Publish `text` until the listener has it (a subscription may be in the making)."""
    async with asyncio.timeout(BOUND):
        while text not in received:
            await publisher.publish(text)
            await asyncio.sleep(0.05)


async def test_a_subscription_that_stops_delivering_is_replaced_after_a_gap(redis_url: str) -> None:
    target = urlsplit(redis_url)
    proxy = FaultProxy(target.hostname or "127.0.0.1", target.port or 6379, seed=1)
    await proxy.start()
    channel = RedisChannel(
        Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0", socket_connect_timeout=0.5),
        CHANNEL,
        "test",
        reconnect_seconds=0.1,
        probe_interval=0.2,
        probe_timeout=0.5,
    )
    publisher = RedisChannel(Redis.from_url(redis_url), CHANNEL, "test", publish_timeout_seconds=1.0)
    received: list[str] = []
    gaps = [0]

    def gap() -> None:
        gaps[0] += 1

    listening = asyncio.create_task(channel.listen(received.append, gap))
    try:
        await _delivered(publisher, received, "before")
        before = gaps[0]
        proxy.set_faults(Faults(blackhole=True))  # the connection stays open and passes nothing
        await _until(lambda: gaps[0] > before)  # the ping got no answer: a gap
        proxy.clear()
        await _delivered(publisher, received, "after")  # a new subscription delivers again
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await channel.close()
        await publisher.close()
        await proxy.stop()
