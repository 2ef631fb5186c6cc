"""The per-client concurrency cap, fleet-wide on a real Redis: two guards, each with a limiter
of its own (its own connections, as two Keel processes have), share one client's slots; a
slot is taken in the same step as the decision and only by an admitted request; a slot that a
killed process never gave back expires with its lease; a decision cut off after Redis may have
run it gives its slot back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from keel.observability.metrics import Metrics
from keel.ratelimit.guard import RateLimitGuard, RateLimitOutcome
from keel.ratelimit.policy import Plan, Policy
from keel.ratelimit.ports import LimiterUnavailable
from keel.ratelimit.redis import RedisRateLimiter, connect, policy_key, slots_key

# One unit a minute, a burst of 1,000: the cap decides, never the quota. The refill is slow on
# purpose: the script gives each policy key a TTL of its time to refill, taken from the injected
# clock but counted by Redis in real time. At 1,000 units a second three admissions made a key
# of 4 ms, which a slow moment on a loaded host outlived (the test then read no key at all).
CAP_3 = Plan("capped", (Policy("burst", quota=1, window_seconds=60, burst=1000),), concurrency=3)
EPOCH_US = 1_790_000_000_123_456
LEASE_SECONDS = 10.0


def _client() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def limiters(redis_url: str) -> AsyncIterator[tuple[list[RedisRateLimiter], list[int]]]:
    """Two limiters with connections of their own, deciding at one injected time (so that no
    test races the wall clock over a lease)."""
    now = [EPOCH_US]
    made = [
        RedisRateLimiter(
            connect(redis_url), timeout_seconds=0.5, clock_us=lambda: now[0], slot_lease_seconds=LEASE_SECONDS
        )
        for _ in range(2)
    ]
    yield made, now
    for limiter in made:
        await limiter.close()


@pytest.fixture
def two_processes(
    limiters: tuple[list[RedisRateLimiter], list[int]],
) -> tuple[RateLimitGuard, RateLimitGuard, list[int]]:
    """Two guards, one on each limiter."""
    made, now = limiters
    return RateLimitGuard(made[0], Metrics()), RateLimitGuard(made[1], Metrics()), now


def _over_cap(outcome: RateLimitOutcome) -> bool:
    return (
        not outcome.allowed
        and outcome.violated_policies == ["concurrency"]
        and outcome.ratelimit_header == '"concurrency";r=0'
        and outcome.retry_after_seconds == 1
    )


async def test_two_processes_admit_one_cap_between_them(
    two_processes: tuple[RateLimitGuard, RateLimitGuard, list[int]], redis: Redis
) -> None:
    first, second, _ = two_processes
    client = _client()
    held = [await first.admit(client, CAP_3, 1), await first.admit(client, CAP_3, 1)]
    held.append(await second.admit(client, CAP_3, 1))
    assert all(outcome.allowed and outcome.slot is not None for outcome in held)
    assert await redis.zcard(slots_key(client)) == 3
    tat_before = await redis.get(policy_key(client, "burst"))

    # Each process has fewer than three in flight; the fleet has three.
    assert _over_cap(await second.admit(client, CAP_3, 1))
    assert _over_cap(await first.admit(client, CAP_3, 1))
    assert await redis.get(policy_key(client, "burst")) == tat_before  # refused: charged nothing

    slot = held[0].slot
    assert slot is not None
    await first.release_slot(client, slot)
    first.release(client)
    assert await redis.zcard(slots_key(client)) == 2
    again = await second.admit(client, CAP_3, 1)
    assert again.allowed
    assert again.slot is not None
    assert again.slot != slot  # a new name: the slot a request gave back is never released twice


async def test_a_request_refused_by_its_quota_takes_no_slot(
    two_processes: tuple[RateLimitGuard, RateLimitGuard, list[int]], redis: Redis
) -> None:
    first, _, _ = two_processes
    client = _client()
    tight = Plan("tight", (Policy("burst", quota=1, window_seconds=60, burst=2),), concurrency=5)
    assert (await first.admit(client, tight, 2)).allowed
    refused = await first.admit(client, tight, 1)
    assert not refused.allowed
    assert refused.violated_policies == ["burst"]
    assert refused.slot is None
    assert await redis.zcard(slots_key(client)) == 1  # the admitted request's slot only


async def test_a_charge_for_a_request_that_will_not_run_takes_no_slot(
    two_processes: tuple[RateLimitGuard, RateLimitGuard, list[int]], redis: Redis
) -> None:
    first, _, _ = two_processes
    client = _client()
    for _ in range(CAP_3.concurrency + 2):
        charged = await first.admit(client, CAP_3, 1, hold=False)
        assert charged.allowed
        assert charged.slot is None
        first.release(client)
    assert await redis.exists(slots_key(client)) == 0


async def test_slots_a_killed_process_left_expire_with_their_lease(
    two_processes: tuple[RateLimitGuard, RateLimitGuard, list[int]], redis: Redis
) -> None:
    killed, survivor, now = two_processes
    client = _client()
    for _ in range(CAP_3.concurrency):
        assert (await killed.admit(client, CAP_3, 1)).allowed  # never released: the process died
    ttl_ms = await redis.pttl(slots_key(client))
    assert 0 < ttl_ms <= LEASE_SECONDS * 1000 + 1
    now[0] += round(LEASE_SECONDS * 1_000_000) - 1  # a microsecond before the leases end
    assert _over_cap(await survivor.admit(client, CAP_3, 1))
    now[0] += 1
    assert (await survivor.admit(client, CAP_3, 1)).allowed
    assert await redis.zcard(slots_key(client)) == 1  # the dead ones dropped, the new one held


async def test_a_live_process_renews_the_slots_it_holds_past_their_lease(
    limiters: tuple[list[RedisRateLimiter], list[int]], redis: Redis
) -> None:
    """A request may outlive the lease (a body sent slowly): its process renews the slot, so
    the fleet does not start admitting more; a slot given back is not renewed back."""
    (alive, other), now = limiters
    holder, asker = RateLimitGuard(alive, Metrics()), RateLimitGuard(other, Metrics())
    client = _client()
    held = [await holder.admit(client, CAP_3, 1) for _ in range(CAP_3.concurrency)]
    assert all(outcome.allowed for outcome in held)
    now[0] += round(LEASE_SECONDS * 1_000_000) - 1
    await alive.renew_held_slots()
    now[0] += 2  # past the leases first taken
    assert _over_cap(await asker.admit(client, CAP_3, 1))
    slot = held[0].slot
    assert slot is not None
    await holder.release_slot(client, slot)
    holder.release(client)
    await alive.renew_held_slots()
    assert await redis.zcard(slots_key(client)) == 2  # the one given back stays given back
    assert (await asker.admit(client, CAP_3, 1)).allowed


async def test_the_slots_ttl_is_never_shortened_by_a_shorter_lease(redis_url: str, redis: Redis) -> None:
    """Processes with different leases (a configuration being rolled out) share a client's
    slots: the set's TTL follows the longest, so no process's slots vanish early."""
    long_lease = RedisRateLimiter(connect(redis_url), timeout_seconds=0.5, slot_lease_seconds=600)
    short_lease = RedisRateLimiter(connect(redis_url), timeout_seconds=0.5, slot_lease_seconds=5)
    try:
        client = _client()
        assert (await long_lease.acquire(client, CAP_3, 1, slot="long")).slot_held
        assert (await short_lease.acquire(client, CAP_3, 1, slot="short")).slot_held
        assert await redis.pttl(slots_key(client)) > 5_000
    finally:
        await long_lease.close()
        await short_lease.close()


class _CutOffRedis:
    """Stands in for a Redis that runs the script but whose reply never comes back in time;
    records the slots given back."""

    def __init__(self) -> None:
        self.removed: list[tuple[str, str]] = []

    def register_script(self, script: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> list[Any]:
            await asyncio.sleep(10)
            raise AssertionError("the deadline should have cut the call off")

        return run

    async def get(self, key: str) -> None:
        return None

    async def zrem(self, key: str, member: str) -> int:
        self.removed.append((key, member))
        return 1

    async def aclose(self) -> None:
        return None


async def test_a_decision_cut_off_by_its_deadline_gives_its_slot_back() -> None:
    redis = _CutOffRedis()
    limiter = RedisRateLimiter(redis, timeout_seconds=0.01)  # type: ignore[arg-type]
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("c", CAP_3, 1, slot="p:7")
    await limiter.close()  # waits for the releases in flight
    assert redis.removed == [(slots_key("c"), "p:7")]


class _HeldPipelines:
    """Records each command or pipeline of releases; holds each until `go` is set."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()

    def register_script(self, script: str) -> Any:
        return None

    async def zrem(self, key: str, member: str) -> int:  # one release alone: one command
        self.sent.append([member])
        self.waiting.set()
        await self.go.wait()
        return 1

    def pipeline(self, transaction: bool) -> Any:
        owner = self
        queued: list[str] = []

        class Pipeline:
            def zrem(self, key: str, member: str) -> None:
                queued.append(member)

            async def execute(self) -> list[int]:
                owner.sent.append(list(queued))
                owner.waiting.set()
                await owner.go.wait()
                return [1] * len(queued)

        return Pipeline()

    async def aclose(self) -> None:
        return None


async def test_releases_asked_for_while_one_is_on_its_way_go_together_in_the_next() -> None:
    redis = _HeldPipelines()
    limiter = RedisRateLimiter(redis, timeout_seconds=5.0)  # type: ignore[arg-type]
    first = asyncio.create_task(limiter.release_slot("c", "a"))
    await redis.waiting.wait()  # "a" is on its way, alone
    later = [asyncio.create_task(limiter.release_slot("c", name)) for name in ("b", "c", "d")]
    await asyncio.sleep(0)  # let them queue
    assert not any(task.done() for task in [first, *later])  # each waits for its own release
    redis.go.set()
    await asyncio.gather(first, *later)
    assert redis.sent == [["a"], ["b", "c", "d"]]
    await limiter.close()
