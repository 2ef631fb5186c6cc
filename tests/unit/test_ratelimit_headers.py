"""The RateLimit fields parse as structured-field lists with the draft's parameters."""

from __future__ import annotations

import http_sf

from keel.ratelimit.gcra import decide, describe
from keel.ratelimit.headers import format_policy_header, format_ratelimit_header
from keel.ratelimit.policy import DEFAULT_PLANS, Plan, Policy


def test_policy_header_lists_every_policy_and_the_concurrency_cap() -> None:
    plan = Plan(
        "p",
        (Policy("burst", quota=20, window_seconds=1, burst=40), Policy("hourly", 5000, 3600, 5000)),
        concurrency=20,
    )
    parsed = http_sf.parse(format_policy_header(plan).encode(), tltype="list")
    assert parsed == [
        ("burst", {"q": 20, "w": 1}),
        ("hourly", {"q": 5000, "w": 3600}),
        ("concurrency", {"q": 20, "qu": "concurrent-requests"}),
    ]


def test_every_built_in_plan_has_a_parseable_policy_header() -> None:
    for plan in DEFAULT_PLANS.values():
        parsed = http_sf.parse(plan.policy_header.encode(), tltype="list")
        assert [name for name, _ in parsed] == [*(p.name for p in plan.policies), "concurrency"]


def test_ratelimit_header_names_the_policy_closest_to_its_limit() -> None:
    roomy = Policy("hourly", quota=3600, window_seconds=3600, burst=100)
    tight = Policy("burst", quota=10, window_seconds=1, burst=10)
    verdicts, tats = decide([None, None], 0.0, [roomy, tight], cost=4)
    header = format_ratelimit_header(describe(verdicts, tats, 0.0, [roomy, tight], 4))
    assert header is not None
    [(name, params)] = http_sf.parse(header.encode(), tltype="list")
    assert name == "burst"
    assert params == {"r": 6, "t": 1}


def test_shadow_policies_are_not_shown_to_clients() -> None:
    trial = Policy("trial", quota=1, window_seconds=1, burst=1, shadow=True)
    enforced = Policy("burst", quota=10, window_seconds=1, burst=10)
    plan = Plan("p", (enforced, trial), concurrency=3)
    assert [name for name, _ in http_sf.parse(plan.policy_header.encode(), tltype="list")] == [
        "burst",
        "concurrency",
    ]
    verdicts, tats = decide([None, None], 0.0, [enforced, trial], cost=5)
    header = format_ratelimit_header(describe(verdicts, tats, 0.0, [enforced, trial], 5))
    assert header is not None
    assert header.startswith('"burst";')


def test_a_divided_plan_still_admits_the_dearest_operation() -> None:
    plan = DEFAULT_PLANS["anonymous"].divided(3, minimum_burst=10)
    assert min(p.burst for p in plan.policies) >= 10
