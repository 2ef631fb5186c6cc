"""The Redis limiter against a real Redis: the Lua script decides as the reference arithmetic
does, atomically across concurrent callers, leaves a TTL on every key, and the fail-open
limiter falls back to a local share when Redis is stopped and comes back when it returns."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from testkit.servers.redis import redis_server

from keel.ratelimit.fallback import FailOpenRateLimiter
from keel.ratelimit.headers import format_ratelimit_header
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.policy import Plan, Policy
from keel.ratelimit.ports import LimiterUnavailable
from keel.ratelimit.redis import KILL_SWITCH_KEY, RedisRateLimiter, connect, policy_key
from keel.resilience.breaker import BreakerState, CircuitBreaker

PER_MINUTE = Plan("minute", (Policy("minute", quota=100, window_seconds=60, burst=10),), concurrency=50)


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RedisRateLimiter]:
    limiter = RedisRateLimiter(connect(redis_url), timeout_seconds=0.5)
    yield limiter
    await limiter.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _client() -> str:
    return f"test-{uuid.uuid4().hex}"


# Epoch microseconds, as Redis's TIME gives them; the scripts decide at this injected time, so no
# test races the wall clock.
EPOCH_US = 1_790_000_000_123_456


@pytest.fixture
async def clocked(redis_url: str) -> AsyncIterator[tuple[RedisRateLimiter, list[int]]]:
    now = [EPOCH_US]
    limiter = RedisRateLimiter(connect(redis_url), timeout_seconds=0.5, clock_us=lambda: now[0])
    yield limiter, now
    await limiter.close()


async def test_burst_then_reject_with_retry_after(clocked: tuple[RedisRateLimiter, list[int]]) -> None:
    limiter, now = clocked
    client = _client()
    decisions = []
    for _ in range(11):  # one a millisecond
        decisions.append(await limiter.acquire(client, PER_MINUTE, 1))
        now[0] += 1_000
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    rejected = decisions[-1]
    assert rejected.violated[0].policy.name == "minute"
    # One unit comes back every 0.6 s, and 10 ms have passed since the burst began; the
    # header value is whole seconds, rounded up.
    assert rejected.violated[0].retry_after_us == 600_000 - 10_000
    assert rejected.retry_after_seconds == 1
    assert decisions[0].states[0].remaining == 9


@pytest.mark.parametrize("power", [50, 51])
async def test_the_script_resets_exactly_whatever_the_clock_reads(
    clocked: tuple[RedisRateLimiter, list[int]], power: int
) -> None:
    # The RateLimit header's `t` from the script's integers: exactly 300 s for a write costing 5
    # at one unit a minute, with the clock just below a power of two in microseconds.
    limiter, now = clocked
    plan = Plan("p", (Policy("burst", quota=1, window_seconds=60, burst=12),), concurrency=1)
    for below in (1, 7_654_321, 299_999_999):
        now[0] = 2**power - below
        decision = await limiter.acquire(_client(), plan, 5)
        assert decision.states[0].reset_us == 300_000_000
        assert format_ratelimit_header(decision) == '"burst";r=7;t=300'


async def test_concurrent_requests_never_exceed_quota_plus_burst(redis_url: str, redis: Redis) -> None:
    # Atomicity, not speed, is under test: 250 decisions in flight at once over a few connections
    # (opening a hundred at once made connects time out on a busy 2-core machine), with a
    # deadline they all meet.
    limiter = RedisRateLimiter(connect(redis_url, max_connections=8), timeout_seconds=10.0)
    client = _client()
    started = time.monotonic()
    try:
        decisions = await asyncio.gather(*(limiter.acquire(client, PER_MINUTE, 1) for _ in range(250)))
    finally:
        await limiter.close()
    elapsed = time.monotonic() - started
    admitted = sum(d.allowed for d in decisions)
    # Burst 10, plus one unit per 0.6 s of the time the 250 decisions took.
    assert 10 <= admitted <= 10 + int(elapsed / 0.6) + 1
    ttl = await redis.pttl(policy_key(client, "minute"))
    assert 0 < ttl <= 60_000


async def test_every_key_written_has_a_ttl(limiter: RedisRateLimiter, redis: Redis) -> None:
    client = _client()
    plan = Plan(
        "two",
        (Policy("s", quota=10, window_seconds=1, burst=10), Policy("h", 3600, 3600, 100)),
        concurrency=5,
    )
    await limiter.acquire(client, plan, 3)
    keys = [key async for key in redis.scan_iter(match=f"keel:rl:{{{client}}}:*")]
    assert len(keys) == 2
    for key in keys:
        assert await redis.pttl(key) > 0


async def test_a_rejection_by_one_policy_charges_none(limiter: RedisRateLimiter, redis: Redis) -> None:
    client = _client()
    plan = Plan(
        "two",
        (Policy("roomy", quota=100, window_seconds=1, burst=100), Policy("tight", 5, 1, 5)),
        concurrency=5,
    )
    assert (await limiter.acquire(client, plan, 5)).allowed
    roomy_before = await redis.get(policy_key(client, "roomy"))
    decision = await limiter.acquire(client, plan, 5)
    assert not decision.allowed
    assert [s.policy.name for s in decision.violated] == ["tight"]
    assert await redis.get(policy_key(client, "roomy")) == roomy_before


async def test_shadow_policy_reports_without_rejecting(limiter: RedisRateLimiter) -> None:
    client = _client()
    plan = Plan(
        "shadowed",
        (Policy("enforced", quota=100, window_seconds=1, burst=100), Policy("trial", 2, 1, 2, shadow=True)),
        concurrency=5,
    )
    decisions = [await limiter.acquire(client, plan, 1) for _ in range(4)]
    assert all(d.allowed for d in decisions)
    assert [bool(d.shadow_violated) for d in decisions] == [False, False, True, True]


async def test_refund_gives_units_back(limiter: RedisRateLimiter) -> None:
    client = _client()
    for _ in range(10):
        assert (await limiter.acquire(client, PER_MINUTE, 1)).allowed
    assert not (await limiter.acquire(client, PER_MINUTE, 1)).allowed
    await limiter.refund(client, PER_MINUTE, 1)
    assert (await limiter.acquire(client, PER_MINUTE, 1)).allowed


async def test_the_kill_switch_admits_everything_fleet_wide(limiter: RedisRateLimiter, redis: Redis) -> None:
    client = _client()
    try:
        await limiter.set_switch(enabled=False)
        assert await redis.get(KILL_SWITCH_KEY) == b"off"
        assert all([(await limiter.acquire(client, PER_MINUTE, 1)).allowed for _ in range(30)])
    finally:
        await limiter.set_switch(enabled=True)
    assert [(await limiter.acquire(client, PER_MINUTE, 1)).allowed for _ in range(11)].count(False) == 1


async def test_matches_the_in_memory_limiter_on_the_same_sequence(
    clocked: tuple[RedisRateLimiter, list[int]],
) -> None:
    # Same plan, same requests at the same (injected) times: the same decisions, to the
    # microsecond.
    limiter, now = clocked
    client = _client()
    plan = Plan("cost", (Policy("s", quota=1, window_seconds=60, burst=20),), concurrency=5)
    local = InMemoryRateLimiter(now_us=lambda: now[0])
    costs = [3, 5, 1, 7, 2, 4, 1, 1, 6]
    shared, in_memory = [], []
    for cost in costs:
        shared.append(await limiter.acquire(client, plan, cost))
        in_memory.append(await local.acquire(client, plan, cost))
        now[0] += 1_500_000  # a fortieth of a unit each time
    assert [d.allowed for d in shared] == [True, True, True, True, True, False, True, True, False]
    assert shared == in_memory


async def test_unreachable_redis_is_reported_as_unavailable() -> None:
    with redis_server() as server:
        url = server.url
    limiter = RedisRateLimiter(connect(url), timeout_seconds=0.05)
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire(_client(), PER_MINUTE, 1)
    await limiter.close()


async def test_fails_open_to_a_local_share_and_returns_to_redis() -> None:
    reasons: list[str] = []
    plan = Plan("p", (Policy("minute", quota=100, window_seconds=60, burst=20),), concurrency=50)
    with redis_server() as server:
        clock = [1_000.0]  # the breaker's: moved by the test, so its open period is not waited out
        breaker = CircuitBreaker("redis", consecutive_failures=3, open_seconds=0.5, clock=lambda: clock[0])
        limiter = FailOpenRateLimiter(
            RedisRateLimiter(connect(server.url), timeout_seconds=0.05),
            local=InMemoryRateLimiter(),
            breaker=breaker,
            nodes=lambda: 2,
            on_fallback=reasons.append,
        )
        client = _client()
        assert not (await limiter.acquire(client, plan, 1)).degraded

        server.stop()
        decisions = [await limiter.acquire(client, plan, 1) for _ in range(40)]
        assert all(d.degraded for d in decisions)
        # Fail open, but bounded: the local share is half the burst (two nodes).
        assert sum(d.allowed for d in decisions) == 10
        assert breaker.state is BreakerState.OPEN
        assert "breaker_open" in reasons
        assert len([r for r in reasons if r != "breaker_open"]) == 3  # Redis was asked 3 times only

        server.start()  # same port
        assert (await limiter.acquire(client, plan, 1)).degraded  # still open: Redis not asked
        clock[0] += 0.5  # the open period is over: the next decision is a probe
        recovered = await limiter.acquire(client, plan, 1)
        assert not recovered.degraded
        # Read afresh: mypy would keep the narrowing of the assert above across the calls.
        state: BreakerState = breaker.state
        assert state is BreakerState.CLOSED
        await limiter.close()


async def test_connections_a_restarted_redis_closed_are_replaced_without_a_failure() -> None:
    # Found by chaos experiment 06: after Redis restarted, each pooled connection failed once on
    # first use, and three in a row reopened the breaker.
    with redis_server() as server:
        limiter = RedisRateLimiter(connect(server.url), timeout_seconds=5.0)
        client = _client()
        await asyncio.gather(*(limiter.acquire(client, PER_MINUTE, 1) for _ in range(8)))  # 8 in the pool
        server.stop()
        server.start()  # same port: every pooled connection is closed at its far end
        decisions = [await limiter.acquire(client, PER_MINUTE, 1) for _ in range(8)]
        await limiter.close()
    assert all(d.allowed for d in decisions)  # a stale connection raised LimiterUnavailable


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_script_decides_as_the_reference_does(limiter: RedisRateLimiter, seed: int) -> None:
    """Random costs, refunds, fractional emission intervals and a shadow policy, in quick
    succession (so that refill is a negligible fraction of a unit): Redis and the in-memory
    limiter, which shares the Python arithmetic, agree on every verdict and every remainder."""
    rng = random.Random(seed)
    plan = Plan(
        "mixed",
        (
            Policy("a", quota=7, window_seconds=60, burst=rng.randint(10, 25)),
            Policy("b", quota=13, window_seconds=600, burst=rng.randint(10, 40)),
            Policy("trial", quota=3, window_seconds=60, burst=10, shadow=True),
        ),
        concurrency=5,
    )
    client = _client()
    local = InMemoryRateLimiter()
    for _ in range(40):
        cost = rng.choice([1, 2, 3, 5, 8])
        if rng.random() < 0.15:
            await limiter.refund(client, plan, cost)
            await local.refund(client, plan, cost)
            continue
        shared, reference = await limiter.acquire(client, plan, cost), await local.acquire(client, plan, cost)
        assert shared.allowed == reference.allowed
        assert [(s.conforms, s.remaining) for s in shared.states] == [
            (s.conforms, s.remaining) for s in reference.states
        ]


async def test_a_traced_decision_is_a_redis_client_span_and_an_untraced_one_none(redis_url: str) -> None:
    """Within a recorded span, each decision is a client span by OpenTelemetry's database
    conventions; outside one (an unsampled request), no span at all."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")
    limiter = RedisRateLimiter(connect(redis_url), timeout_seconds=0.5, tracer=tracer)
    try:
        await limiter.acquire(_client(), PER_MINUTE, 1)  # no current span
        assert exported.get_finished_spans() == ()
        with tracer.start_as_current_span("request") as request:
            await limiter.acquire(_client(), PER_MINUTE, 1)
    finally:
        await limiter.close()
    [decision] = [s for s in exported.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert decision.name == "EVALSHA"
    assert decision.parent is not None
    assert decision.parent.span_id == request.get_span_context().span_id
    attributes = dict(decision.attributes or {})
    host, port = redis_url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    assert attributes == {
        "db.system.name": "redis",
        "db.system": "redis",
        "db.operation.name": "EVALSHA",
        "server.address": host,
        "server.port": int(port),
    }
