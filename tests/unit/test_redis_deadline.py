"""The Redis limiter's deadline: a reply that is late because Redis is slow is a failure (the
caller falls back); a reply that is late because this process's event loop is behind is waited
for, up to a second, because falling back would admit what Redis refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keel.ratelimit.policy import Plan, Policy
from keel.ratelimit.ports import LimiterUnavailable
from keel.ratelimit.redis import RedisRateLimiter

PLAN = Plan("p", (Policy("s", quota=10, window_seconds=1, burst=10),), concurrency=5)


class SlowRedis:
    """Answers the GCRA script like Redis would for a fresh client (no slot asked), after `delay`
    seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def register_script(self, script: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> list[Any]:
            await asyncio.sleep(self.delay)
            return [1_000_000, -1, 1, b"1100000"]  # no slot asked; one policy

        return run

    async def get(self, key: str) -> None:
        return None  # the kill switch is not set

    async def aclose(self) -> None:
        return None


class Lag:
    def __init__(self, behind: bool) -> None:
        self._behind = behind

    def behind(self, threshold_seconds: float) -> bool:
        return self._behind


def _limiter(redis: SlowRedis, timeout_seconds: float, lag: Lag | None = None) -> RedisRateLimiter:
    """A limiter on a stand-in client that answers the three calls it makes (register_script,
    get, aclose): RedisRateLimiter takes the concrete `redis.asyncio.Redis`, not a port."""
    return RedisRateLimiter(redis, timeout_seconds=timeout_seconds, loop_lag=lag)  # type: ignore[arg-type]


async def test_a_slow_redis_is_a_failure() -> None:
    limiter = _limiter(SlowRedis(0.2), 0.02, Lag(behind=False))
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("c", PLAN, 1)


async def test_a_late_reply_while_this_process_is_behind_is_waited_for() -> None:
    limiter = _limiter(SlowRedis(0.2), 0.02, Lag(behind=True))
    decision = await limiter.acquire("c", PLAN, 1)
    assert decision.allowed
    assert decision.states[0].remaining == 9


async def test_but_not_for_ever() -> None:
    # Redis would answer (allowed) after 5 s: a limiter that waited for the reply would admit,
    # so the failure alone shows it gave up first. No wall-clock bound: the cap is a second, and
    # a loaded machine may stretch any elapsed time.
    limiter = _limiter(SlowRedis(5.0), 0.05, Lag(behind=True))
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("c", PLAN, 1)


class KilledRedis(SlowRedis):
    """What uvloop does when the driver writes to a connection a killed Redis closed."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def register_script(self, script: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> list[Any]:
            raise RuntimeError(
                "unable to perform operation on <TCPTransport closed=True>; the handler is closed"
            )

        return run

    async def get(self, key: str) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


async def test_a_connection_closed_under_the_driver_is_redis_failing_not_a_crash() -> None:
    limiter = _limiter(KilledRedis(), 0.02)
    assert not await limiter.switched_off()  # the last known state stays
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("c", PLAN, 1)


class BlackholedSwitch(SlowRedis):
    """Never answers the first kill-switch read (later ones at once: not set); answers the
    script at once, counting the calls."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.script_calls = 0
        self.switch_reads = 0

    def register_script(self, script: str) -> Any:
        answer = super().register_script(script)

        async def run(keys: list[str], args: list[Any]) -> list[Any]:
            self.script_calls += 1
            return await answer(keys, args)  # type: ignore[no-any-return]

        return run

    async def get(self, key: str) -> None:
        self.switch_reads += 1
        if self.switch_reads == 1:
            await asyncio.Event().wait()  # blackholed: no answer, ever


# A deadline far longer than two adjacent statements can be apart, however loaded the machine:
# the decision right after an unanswered read counts as "right after" for one deadline.
SWITCH_DEADLINE = 0.5


async def test_a_request_whose_switch_read_went_unanswered_does_not_wait_again_for_its_decision() -> None:
    # Found by chaos experiment 06: the request that read the switch as Redis was blackholed
    # waited out two deadlines, the read's and its decision's.
    redis = BlackholedSwitch()
    limiter = _limiter(redis, SWITCH_DEADLINE, Lag(behind=False))
    assert not await limiter.switched_off()  # the last known state stays
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire("c", PLAN, 1)
    assert redis.script_calls == 0
    # Only that request's: another one, and this one's next decision, ask Redis.
    assert (await asyncio.create_task(limiter.acquire("c", PLAN, 1))).allowed
    assert (await limiter.acquire("c", PLAN, 1)).allowed
    assert redis.script_calls == 2


async def test_an_unanswered_switch_read_while_this_process_is_behind_leaves_the_decision_to_redis() -> None:
    # The loop, not Redis, was late: the decision asks Redis, which answers.
    redis = BlackholedSwitch()
    limiter = _limiter(redis, SWITCH_DEADLINE, Lag(behind=True))
    assert not await limiter.switched_off()
    assert (await limiter.acquire("c", PLAN, 1)).allowed
    assert redis.script_calls == 1
