"""The RateLimit-Policy and RateLimit fields of the IETF httpapi draft, as of
draft-ietf-httpapi-ratelimit-headers-08 (quota units from its registry, `w` a whole number of
seconds), serialized as HTTP structured fields (lists of items with parameters).
Protocol-neutral strings: REST sends them as headers, gRPC as metadata.

Quota units are the request costs (a read costs 1, a list 10...), not request counts, declared
as `qu="keel-cost"`. A policy is declared as its burst per the time to refill it, so that a
client can reconcile the two fields: `r <= q` and `t <= w` (see `keel.ratelimit.policy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keel.ratelimit.gcra import Decision
    from keel.ratelimit.policy import Plan


def format_policy_header(plan: Plan) -> str:
    """`"burst";q=40;w=2;qu="keel-cost", "hourly";q=1000;w=720;qu="keel-cost",
    "concurrency";q=10;qu="concurrency"` (built with the plan: see `Plan.policy_header`)."""
    return plan.policy_header


def format_ratelimit_header(decision: Decision) -> str | None:
    """The policy closest to its limit: `"burst";r=12;t=1` (t rounded up to whole seconds,
    from integer microseconds: exact at any uptime).."""
    state = decision.closest
    if state is None:
        return None
    return f'"{state.policy.name}";r={state.remaining};t={state.reset_seconds}'
