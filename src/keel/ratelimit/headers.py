"""The RateLimit-Policy and RateLimit fields of the IETF httpapi draft
(draft-ietf-httpapi-ratelimit-headers), serialized as HTTP structured fields (lists of items
with parameters). Protocol-neutral strings: REST sends them as headers, gRPC as metadata.

Quota units are the request costs (a read costs 1, a list 10...), not request counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keel.ratelimit.gcra import Decision
    from keel.ratelimit.policy import Plan


def format_policy_header(plan: Plan) -> str:
    """`"burst";q=20;w=1, "hourly";q=5000;w=3600, "concurrency";q=20;qu="concurrent-requests"`
    (built with the plan: see `Plan.policy_header`)."""
    return plan.policy_header


def format_ratelimit_header(decision: Decision) -> str | None:
    """The policy closest to its limit: `"burst";r=12;t=1` (t rounded up to whole seconds,
    from integer microseconds: exact at any uptime).."""
    state = decision.closest
    if state is None:
        return None
    return f'"{state.policy.name}";r={state.remaining};t={state.reset_seconds}'
