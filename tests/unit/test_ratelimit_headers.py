"""The RateLimit fields parse as structured-field lists with the draft's parameters."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keel.observability.metrics import Metrics
from keel.ratelimit.clock import monotonic_us
from keel.ratelimit.fallback import FailOpenRateLimiter
from keel.ratelimit.gcra import Decision, decide, describe
from keel.ratelimit.guard import RateLimitGuard
from keel.ratelimit.headers import format_policy_header, format_ratelimit_header
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.policy import DEFAULT_PLANS, Plan, Policy
from keel.ratelimit.ports import LimiterUnavailable
from keel.resilience.breaker import CircuitBreaker
from tests.structured_fields import parse_named_list


def test_policy_header_declares_each_burst_per_the_time_to_refill_it() -> None:
    plan = Plan(
        "p",
        (
            Policy("burst", quota=20, window_seconds=1, burst=40),
            Policy("hourly", 5000, 3600, 1000),
            Policy("quick", quota=100, window_seconds=1, burst=30),  # refilled in 0.3 s
        ),
        concurrency=20,
    )
    parsed = parse_named_list(format_policy_header(plan))
    assert parsed == [
        ("burst", {"q": 40, "w": 2, "qu": "keel-cost"}),
        ("hourly", {"q": 1000, "w": 720, "qu": "keel-cost"}),
        # A whole second at least: the draft's window is an integer, and rounding up keeps the
        # declared rate (30 per second) at or below the real one (100 per second).
        ("quick", {"q": 30, "w": 1, "qu": "keel-cost"}),
        ("concurrency", {"q": 20, "qu": "concurrency"}),
    ]


def _integer(value: object) -> int:
    assert isinstance(value, int), value  # the draft's integers, parsed as such
    return value


@pytest.mark.parametrize("plan", DEFAULT_PLANS.values(), ids=list(DEFAULT_PLANS))
@pytest.mark.parametrize("cost", [1, 5, 10])
def test_what_a_client_reads_in_ratelimit_never_exceeds_the_declared_policy(plan: Plan, cost: int) -> None:
    """From idle to refused and back: every `r` at most its policy's `q`, every `t` at most its
    `w` (the header once said `r=195` under `q=100`)."""
    declared = {
        name: (_integer(params["q"]), _integer(params["w"]))
        for name, params in parse_named_list(plan.policy_header)
        if name != "concurrency"
    }
    policies = list(plan.policies)
    tats: list[int | None] = [None] * len(policies)
    seen = 0
    # Spent all at once until refused, then waited out in tenths of the longest refill.
    instants = [0] * (plan.smallest_burst // cost + 2)
    longest = max(p.tolerance_us for p in policies)
    instants += [n * longest // 10 for n in range(1, 12)]
    for now in instants:
        verdicts, new_tats = decide(tats, now, policies, cost)
        decision = describe(verdicts, new_tats, now, policies, cost)
        if decision.allowed:
            tats = list(new_tats)
        for state in decision.states:
            quota, window = declared[state.policy.name]
            assert 0 <= state.remaining <= quota, state
            assert state.reset_seconds <= window, state
        header = format_ratelimit_header(decision)
        assert header is not None
        [(name, params)] = parse_named_list(header)
        quota, window = declared[name]
        assert _integer(params["r"]) <= quota
        assert _integer(params["t"]) <= window
        seen += not decision.allowed
    assert seen > 0  # the run reached refusals, where the bounds are tightest


def test_every_built_in_plan_has_a_parseable_policy_header() -> None:
    for plan in DEFAULT_PLANS.values():
        parsed = parse_named_list(plan.policy_header)
        assert [name for name, _ in parsed] == [*(p.name for p in plan.policies), "concurrency"]


def test_ratelimit_header_names_the_policy_closest_to_its_limit() -> None:
    roomy = Policy("hourly", quota=3600, window_seconds=3600, burst=100)
    tight = Policy("burst", quota=10, window_seconds=1, burst=10)
    verdicts, tats = decide([None, None], 0, [roomy, tight], cost=4)
    header = format_ratelimit_header(describe(verdicts, tats, 0, [roomy, tight], 4))
    assert header is not None
    [(name, params)] = parse_named_list(header)
    assert name == "burst"
    assert params == {"r": 6, "t": 1}


def test_shadow_policies_are_not_shown_to_clients() -> None:
    trial = Policy("trial", quota=1, window_seconds=1, burst=1, shadow=True)
    enforced = Policy("burst", quota=10, window_seconds=1, burst=10)
    plan = Plan("p", (enforced, trial), concurrency=3)
    assert [name for name, _ in parse_named_list(plan.policy_header)] == [
        "burst",
        "concurrency",
    ]
    verdicts, tats = decide([None, None], 0, [enforced, trial], cost=5)
    header = format_ratelimit_header(describe(verdicts, tats, 0, [enforced, trial], 5))
    assert header is not None
    assert header.startswith('"burst";')


def test_a_divided_plan_still_admits_the_dearest_operation() -> None:
    plan = DEFAULT_PLANS["anonymous"].divided(3, minimum_burst=10)
    assert min(p.burst for p in plan.policies) >= 10


# Clocks in the 300 s below a power of two in microseconds (2**36 µs is about 19 hours of uptime):
# there a TAT 300 s ahead lands in the next binade, and with float microseconds (the old
# `monotonic() * 1e6`) `tat - now` came out as 300.0000001 s: `t=301` in about a quarter of the
# decisions. The clock is a nanosecond reading, as `time.monotonic_ns` gives, read in whole
# microseconds as the limiter's default clock does.
PER_MINUTE_12 = Plan("p", (Policy("burst", quota=1, window_seconds=60, burst=12),), concurrency=1)


def _readings_below(power: int) -> list[int]:
    return [2**power * 1000 - n * 299_000_001 for n in range(1, 1001)]


def _stopped_clock(reading_ns: int) -> Callable[[], int]:
    """A clock that always reads `reading_ns`, in whole microseconds as the limiter's does."""
    return lambda: reading_ns // 1000


@pytest.mark.parametrize("power", [36, 40, 52])
def test_reset_is_exact_whatever_the_clock_reads(power: int) -> None:
    # One unit a minute, a burst of 12; a write costs 5, so the policy is back to its full
    # burst in exactly 300 s and the header must say so, at any uptime.
    answers = set()
    for reading in _readings_below(power):
        limiter = InMemoryRateLimiter(now_us=_stopped_clock(reading))
        answers.add(format_ratelimit_header(limiter.acquire_now("c", PER_MINUTE_12, 5)))
    assert answers == {'"burst";r=7;t=300'}


@pytest.mark.parametrize("power", [36, 40, 52])
def test_retry_after_is_exact_whatever_the_clock_reads(power: int) -> None:
    # A list costs 10: after one, the next is 8 units short, exactly 480 s at one unit a minute.
    for reading in _readings_below(power)[::10]:
        limiter = InMemoryRateLimiter(now_us=_stopped_clock(reading))
        assert limiter.acquire_now("c", PER_MINUTE_12, 10).allowed
        refused = limiter.acquire_now("c", PER_MINUTE_12, 10)
        assert not refused.allowed
        assert refused.retry_after_seconds == 480
        assert format_ratelimit_header(refused) == '"burst";r=2;t=600'


def test_the_default_clock_reads_whole_microseconds() -> None:
    assert isinstance(monotonic_us(), int)


class _Unavailable(InMemoryRateLimiter):
    """A shared limiter that never answers: every decision falls back to the local share."""

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        raise LimiterUnavailable("down")


@pytest.mark.parametrize("plan", DEFAULT_PLANS.values(), ids=list(DEFAULT_PLANS))
async def test_a_degraded_decision_is_declared_with_the_share_it_was_made_under(plan: Plan) -> None:
    """While Redis is down each of 3 processes decides under its share of the plan (a longer
    refill): the RateLimit-Policy field sent is the share's, so `r <= q` and `t <= w` still hold
    (declared with the whole plan, `t=4` came under `w=2`)."""
    limiter = FailOpenRateLimiter(
        _Unavailable(),
        local=InMemoryRateLimiter(now_us=lambda: 1_000_000),  # a stopped clock: nothing refills
        breaker=CircuitBreaker("redis"),
        nodes=lambda: 3,
        on_fallback=lambda reason: None,
        minimum_burst=10,
    )
    guard = RateLimitGuard(limiter, Metrics())
    refused = 0
    for _ in range(plan.divided(3, 10).smallest_burst // 10 + 2):
        outcome = await guard.admit("c", plan, 10)
        assert outcome.plan != plan  # the share
        declared = {
            name: (_integer(params["q"]), _integer(params["w"]))
            for name, params in parse_named_list(outcome.plan.policy_header)
            if name != "concurrency"
        }
        assert outcome.ratelimit_header is not None
        [(name, params)] = parse_named_list(outcome.ratelimit_header)
        assert _integer(params["r"]) <= declared[name][0]
        assert _integer(params["t"]) <= declared[name][1]
        if outcome.allowed:
            guard.release("c")
        refused += not outcome.allowed
    assert refused > 0
