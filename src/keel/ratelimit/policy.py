"""Rate-limit policies and the plans that group them.

A policy allows `quota` units per `window_seconds`, of which up to `burst` may be spent at once
by a client that has been idle. In GCRA terms the emission interval is `window / quota` and the
delay-variation tolerance is `burst` emission intervals, so over any window a client gets at
most `quota + burst` units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MICROSECONDS = 1_000_000
RESERVED_POLICY_NAME = "concurrency"  # the concurrency cap's name in headers and problems
_POLICY_NAME = re.compile(r"[a-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    quota: int
    window_seconds: float
    burst: int
    shadow: bool = False  # decide and report, never reject
    # Derived once (every decision reads them): the time for one unit of quota to come back,
    # and the delay-variation tolerance, `burst` of those. Whole microseconds, so that every
    # decision is integer arithmetic (exact at any uptime; floats near 2**k µs are not).
    emission_interval_us: int = field(init=False, compare=False, repr=False)
    tolerance_us: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _POLICY_NAME.fullmatch(self.name) or self.name == RESERVED_POLICY_NAME:
            raise ValueError(
                f"policy name {self.name!r}: 1-32 of a-z, 0-9, '-', '_' (and not {RESERVED_POLICY_NAME!r})"
            )
        if self.quota < 1 or self.burst < 1 or not 0.001 <= self.window_seconds <= 366 * 86400:
            raise ValueError(f"policy {self.name!r}: quota and burst >= 1, window 1 ms to 1 year")
        # Rounded up to a whole microsecond (and at least one): a unit never comes back sooner
        # than the window allows, so a client never gets more than `quota` per window.
        window_us = round(self.window_seconds * MICROSECONDS)
        interval = max(1, -(-window_us // self.quota))
        object.__setattr__(self, "emission_interval_us", interval)
        object.__setattr__(self, "tolerance_us", interval * self.burst)

    def divided(self, parts: int, minimum_burst: int = 1) -> Policy:
        """This policy's share on one of `parts` nodes that decide without a shared store; the
        burst never falls below `minimum_burst` (the dearest operation must still fit)."""
        if parts <= 1:
            return self
        return Policy(
            self.name,
            quota=max(1, self.quota // parts),
            window_seconds=self.window_seconds,
            burst=max(minimum_burst, self.burst // parts, 1),
            shadow=self.shadow,
        )


# The quota unit Keel declares: requests have costs (a read 1, a list 10...), so the draft's
# default unit, `request`, would understate what a list spends. Not in the draft's quota-unit
# registry (request, content-bytes, concurrency), hence the vendor prefix. docs/operations.md.
COST_UNIT = "keel-cost"
# The concurrency cap's unit, from that registry.
CONCURRENCY_UNIT = "concurrency"


def declared_window_seconds(policy: Policy) -> int:
    """The window the RateLimit-Policy field declares for a policy: the time to refill its whole
    burst from empty, in whole seconds (the draft's `w` is an integer), rounded up and at least
    one, so that the declared rate, burst per window, is never above the real one."""
    return max(1, -(-policy.tolerance_us // MICROSECONDS))


def _policy_header(plan: Plan) -> str:
    """The plan's RateLimit-Policy field (see `keel.ratelimit.headers`), built once per plan
    here, so that the plan does not import the module that formats decisions (which imports
    the plan: an import circle).

    Each policy is declared as its burst (`q`) per the time to refill that burst (`w`): the
    `RateLimit` field's remaining units never exceed the burst, so `r <= q` always holds, and
    its reset time never exceeds `w`."""
    items = [
        f'"{p.name}";q={p.burst};w={declared_window_seconds(p)};qu="{COST_UNIT}"'
        for p in plan.policies
        if not p.shadow
    ]  # shadow policies are not enforced, so not announced
    items.append(f'"{RESERVED_POLICY_NAME}";q={plan.concurrency};qu="{CONCURRENCY_UNIT}"')
    return ", ".join(items)


@dataclass(frozen=True, slots=True)
class Plan:
    """The policies that apply together to each client on this plan."""

    name: str
    policies: tuple[Policy, ...]
    concurrency: int  # requests in flight at once, per client: across the fleet on Redis, else per process
    policy_header: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"plan {self.name!r}: policy names must be unique")
        if self.concurrency < 1:
            raise ValueError(f"plan {self.name!r}: concurrency must be positive")
        object.__setattr__(self, "policy_header", _policy_header(self))

    @property
    def smallest_burst(self) -> int:
        enforced = [p.burst for p in self.policies if not p.shadow]
        return min(enforced, default=0)

    def divided(self, parts: int, minimum_burst: int = 1) -> Plan:
        if parts <= 1:
            return self
        return Plan(
            self.name, tuple(p.divided(parts, minimum_burst) for p in self.policies), self.concurrency
        )


EDGE_PLAN = "edge"
DEFAULT_PLANS: dict[str, Plan] = {
    plan.name: plan
    for plan in (
        Plan(
            "anonymous",
            (Policy("burst", quota=10, window_seconds=1, burst=20), Policy("hourly", 1000, 3600, 200)),
            concurrency=5,
        ),
        Plan(
            "free",
            (Policy("burst", quota=20, window_seconds=1, burst=40), Policy("hourly", 5000, 3600, 1000)),
            concurrency=10,
        ),
        Plan(
            "standard",
            (
                Policy("burst", quota=100, window_seconds=1, burst=200),
                Policy("hourly", 100_000, 3600, 10_000),
            ),
            concurrency=20,
        ),
        Plan(
            "partner",
            (
                Policy("burst", quota=500, window_seconds=1, burst=1000),
                Policy("hourly", 1_000_000, 3600, 50_000),
            ),
            concurrency=100,
        ),
        # An edge deployment's own key: every call it makes for its callers is charged to it
        # (each caller was charged at the edge). Large, but a bound on what a stolen edge key
        # can do.
        Plan(
            EDGE_PLAN,
            (
                Policy("burst", quota=20_000, window_seconds=1, burst=40_000),
                Policy("hourly", 50_000_000, 3600, 2_000_000),
            ),
            concurrency=2_000,
        ),
    )
}
