"""GCRA arithmetic against a reference model: a token bucket of `burst` tokens refilled one
token per emission interval, in exact rational arithmetic. GCRA must admit exactly when the
bucket holds the request's cost, for any sequence of arrivals and costs."""

from __future__ import annotations

import random
from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from keel.ratelimit.gcra import admitted, decide, describe
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.policy import Plan, Policy


class TokenBucket:
    def __init__(self, interval_us: int, burst: int) -> None:
        self.interval = interval_us
        self.burst = burst
        self.tokens = Fraction(burst)
        self.at = 0

    def refill(self, now: int) -> None:
        self.tokens = min(Fraction(self.burst), self.tokens + Fraction(now - self.at, self.interval))
        self.at = now

    def conforms(self, now: int, cost: int) -> bool:
        self.refill(now)
        return self.tokens >= cost

    def spend(self, cost: int) -> None:
        self.tokens -= cost


def _policy(name: str, interval_us: int, burst: int, shadow: bool = False) -> Policy:
    # quota 10^6 per `interval_us` seconds: an emission interval of exactly `interval_us` µs.
    return Policy(name, quota=1_000_000, window_seconds=float(interval_us), burst=burst, shadow=shadow)


arrivals = st.lists(st.tuples(st.integers(0, 50_000), st.integers(1, 5)), min_size=1, max_size=60)
policy_shapes = st.tuples(st.integers(1, 20_000), st.integers(5, 30), st.booleans())


@settings(max_examples=300, deadline=None)
@given(shapes=st.lists(policy_shapes, min_size=1, max_size=3), steps=arrivals)
def test_decisions_match_token_buckets_and_are_all_or_nothing(
    shapes: list[tuple[int, int, bool]], steps: list[tuple[int, int]]
) -> None:
    policies = [
        _policy(f"p{i}", interval, burst, shadow) for i, (interval, burst, shadow) in enumerate(shapes)
    ]
    buckets = [TokenBucket(interval, burst) for interval, burst, _ in shapes]
    tats: list[int | None] = [None] * len(policies)
    now = 0
    for gap, cost in steps:
        now += gap
        verdicts, tats = decide(tats, now, policies, cost)
        expected = [bucket.conforms(now, cost) for bucket in buckets]
        assert verdicts == expected
        admitted = all(ok for ok, p in zip(expected, policies, strict=True) if not p.shadow)
        decision = describe(verdicts, tats, now, policies, cost)
        assert decision.allowed == admitted
        if admitted:
            for bucket, ok in zip(buckets, expected, strict=True):
                if ok:  # a shadow policy that would reject is not charged, as if enforced
                    bucket.spend(cost)
        for state, bucket in zip(decision.states, buckets, strict=True):
            assert state.remaining == min(bucket.burst, int(bucket.tokens))
            if not state.conforms:
                # Retry-After is never earlier than the moment the request would conform.
                wait_us = (cost - bucket.tokens) * bucket.interval
                assert state.retry_after_us >= wait_us


def test_a_rejected_request_is_charged_to_no_policy() -> None:
    roomy = _policy("roomy", 1000, 100)
    tight = _policy("tight", 1000, 5)
    verdicts, tats = decide([None, None], 0, [roomy, tight], cost=6)
    assert verdicts == [True, False]
    assert tats == [None, None]


def test_shadow_policies_report_but_never_reject() -> None:
    enforced = _policy("enforced", 1000, 100)
    shadow = _policy("shadow", 1000, 5, shadow=True)
    decision = describe(*_decided([enforced, shadow], cost=6), [enforced, shadow], 6)
    assert decision.allowed
    assert [s.policy.name for s in decision.shadow_violated] == ["shadow"]
    assert decision.violated == ()


def _decided(policies: list[Policy], cost: int) -> tuple[list[bool], list[int | None], int]:
    verdicts, tats = decide([None] * len(policies), 0, policies, cost)
    return verdicts, tats, 0


def test_over_a_window_a_client_gets_quota_plus_burst_at_most() -> None:
    now = [0]
    limiter = InMemoryRateLimiter(now_us=lambda: now[0])
    plan = Plan("p", (Policy("minute", quota=100, window_seconds=60, burst=10),), concurrency=5)
    admitted = 0
    for _ in range(6000):  # one attempt every 10 ms for a minute
        admitted += limiter.acquire_now("c", plan, 1).allowed
        now[0] += 10_000
    assert 100 <= admitted <= 110


def test_refund_gives_back_what_a_request_cost() -> None:
    now = [0]
    limiter = InMemoryRateLimiter(now_us=lambda: now[0])
    plan = Plan("p", (Policy("s", quota=10, window_seconds=1, burst=10),), concurrency=5)
    for _ in range(10):
        assert limiter.acquire_now("c", plan, 1).allowed
    assert not limiter.acquire_now("c", plan, 1).allowed
    import asyncio

    asyncio.run(limiter.refund("c", plan, 1))
    assert limiter.acquire_now("c", plan, 1).allowed


def test_idle_clients_leave_nothing_behind() -> None:
    now = [0]
    limiter = InMemoryRateLimiter(now_us=lambda: now[0])
    plan = Plan("p", (Policy("s", quota=10, window_seconds=1, burst=10),), concurrency=5)
    for i in range(20_001):
        limiter.acquire_now(f"client-{i}", plan, 1)
        now[0] += 1_000  # each entry matters for 100 ms
    assert len(limiter) < 10_200


@settings(max_examples=300, deadline=None)
@given(shapes=st.lists(policy_shapes, min_size=1, max_size=3), steps=arrivals)
# A shadow policy whose debt outlasts the enforced one's: it must not lengthen the wait.
@example(shapes=[(1_000, 5, False), (50_000, 5, True)], steps=[(0, 1)] * 7)
def test_a_refusals_wait_for_one_unit_is_exactly_when_the_cheapest_request_conforms(
    shapes: list[tuple[int, int, bool]], steps: list[tuple[int, int]]
) -> None:
    """What the proxy is told to refuse for (keel.ratelimit.proxy_refusals): never a moment at
    which Keel would admit a one-unit request, and not a microsecond less."""
    policies = [
        _policy(f"p{i}", interval, burst, shadow) for i, (interval, burst, shadow) in enumerate(shapes)
    ]
    tats: list[int | None] = [None] * len(policies)
    now = 0
    for gap, cost in steps:
        now += gap
        before = list(tats)
        verdicts, tats = decide(tats, now, policies, cost)
        decision = describe(verdicts, tats, now, policies, cost)
        if decision.allowed:
            continue
        wait = decision.wait_for_one_unit_us
        assert admitted(decide(before, now + wait, policies, 1)[0], policies)
        if wait > 0:
            assert not admitted(decide(before, now + wait - 1, policies, 1)[0], policies)


def test_remembered_denials_refuse_only_what_the_limiter_would_refuse() -> None:
    from keel.ratelimit.denials import Denials

    now = [0]
    limiter = InMemoryRateLimiter(now_us=lambda: now[0])
    denials = Denials(clock=lambda: now[0])
    plan = Plan(
        "p",
        (Policy("second", quota=10, window_seconds=1, burst=10), Policy("minute", 100, 60, 30)),
        concurrency=5,
    )
    rng = random.Random(3)
    remembered = 0
    for _ in range(5000):
        now[0] += rng.choice([1_000, 10_000, 50_000, 200_000])
        cost = rng.choice([1, 1, 1, 5, 10])
        local = denials.refusal("c", plan, cost)
        decision = limiter.acquire_now("c", plan, cost)
        if local is not None:
            remembered += 1
            assert not decision.allowed  # never refuses what the limiter would admit
            assert local.retry_after_seconds >= decision.retry_after_seconds
        elif not decision.allowed:
            denials.remember("c", plan, decision)
        else:
            denials.forget("c")  # as the guard does: an admission moves the TATs on
    assert remembered > 100
