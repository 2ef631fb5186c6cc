"""The fleet's live process count on a real Redis (keel.ratelimit.membership): every process
counts the others from their heartbeats, scored by Redis's clock; one that leaves or falls
silent stops being counted, once the lower count has held for the heartbeat's TTL (a Redis
restarted empty must not make every process believe it is alone); the configured count is a
floor; the count is what the rate limits' fallback divides by."""

from __future__ import annotations

from redis.asyncio import Redis

from keel.ratelimit.membership import KEY, FleetMembership


async def test_processes_count_each_other_and_stop_counting_one_that_left_or_fell_silent(
    redis_url: str,
) -> None:
    admin = Redis.from_url(redis_url)
    await admin.delete(KEY)
    seen: list[int] = []
    clock = [0.0]
    fleet = [
        FleetMembership(Redis.from_url(redis_url), configured=1, on_count=seen.append, clock=lambda: clock[0])
        for _ in range(3)
    ]
    floored = FleetMembership(Redis.from_url(redis_url), configured=7)
    try:
        assert [member.processes() for member in fleet] == [1, 1, 1]  # configured, until a heartbeat
        for member in fleet:
            await member.beat()
        assert [await member.beat() for member in fleet] == [3, 3, 3]
        await fleet[2].leave()
        assert await fleet[0].beat() == 3  # lower, but not yet for a TTL
        clock[0] += 10.0  # the default TTL
        assert await fleet[0].beat() == 2
        # A process killed without leaving: its last heartbeat, long ago by Redis's clock.
        now = float((await admin.time())[0])
        await admin.zadd(KEY, {"gone-host:1:dead": now - 3600})
        assert await fleet[1].beat() == 3  # fleet[1] still counts the one that left
        clock[0] += 10.0
        assert await fleet[1].beat() == 2
        assert fleet[1].processes() == 2
        assert seen[-1] == 2
        # A Redis emptied (restarted without its data): the count is not believed at once.
        await admin.delete(KEY)
        assert await fleet[0].beat() == 2
        await fleet[1].beat()
        assert fleet[0].processes() == 2
        # The configured count is a floor: a process told the fleet is at least 7 counts 7.
        assert floored.processes() == 7
        assert await floored.beat() == 7
    finally:
        for member in [*fleet[:2], floored]:
            await member.leave()
        await admin.delete(KEY)
        await admin.aclose()
