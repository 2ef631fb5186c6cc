"""GCRA arithmetic: one stored value per client and policy, the theoretical arrival time (TAT).

Pure functions on integer microsecond timestamps, shared by the in-memory limiter and by the
Python side of the Redis limiter (whose Lua script makes the same decision on the server; the
test suite checks the two agree). A missing TAT means a client that has been idle long enough to
be full.

Integers end to end, because floats are not exact here: at a clock of about 2**36 µs (19 hours
of uptime) `tat - now` came out as 300.0000001 s for a debt of exactly 300 s, and the RateLimit
header said `t=301`. Seconds for clients are derived with integer ceiling division.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keel.ratelimit.policy import MICROSECONDS, Plan, Policy


def ceil_seconds(microseconds: int) -> int:
    """Whole seconds, rounded up: never earlier than the real time."""
    return -(-microseconds // MICROSECONDS)


@dataclass(frozen=True, slots=True)
class PolicyState:
    policy: Policy
    conforms: bool  # this policy alone would admit the request
    remaining: int  # units that could be spent right now, after this decision
    reset_us: int  # until the policy is back to its full burst
    retry_after_us: int  # 0 when conforming; else the wait until the request would conform

    @property
    def reset_seconds(self) -> int:
        return ceil_seconds(self.reset_us)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    cost: int
    states: tuple[PolicyState, ...]
    degraded: bool = False  # decided locally because the shared store was unavailable
    # The fleet-wide concurrency cap (a shared limiter asked for a slot): `slot_held` when the
    # request took one, which `RateLimiter.release_slot` gives back; `over_cap` when the client
    # had none left (refused, nothing charged, no states).
    slot_held: bool = False
    over_cap: bool = False
    # The plan the decision was made under when not the one asked for (a degraded decision,
    # under this process's share of the plan): what the RateLimit-Policy field must declare.
    plan: Plan | None = None

    @property
    def violated(self) -> tuple[PolicyState, ...]:
        return tuple(s for s in self.states if not s.conforms and not s.policy.shadow)

    @property
    def shadow_violated(self) -> tuple[PolicyState, ...]:
        return tuple(s for s in self.states if not s.conforms and s.policy.shadow)

    @property
    def closest(self) -> PolicyState | None:
        """The policy that would refuse first: fewest units left (every policy is charged the
        same cost), the later refill breaking ties."""
        enforced = (s for s in self.states if not s.policy.shadow)  # shadow: never told to clients
        return min(enforced, key=lambda s: (s.remaining, -s.reset_us), default=None)

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds, rounded up: never earlier than the real refill time."""
        return ceil_seconds(max((s.retry_after_us for s in self.violated), default=0))

    @property
    def wait_for_one_unit_us(self) -> int:
        """How long, from this decision, until a request costing one unit (the cheapest there
        is: costs are whole units) could conform to every enforced policy; 0 when it could now.
        What a refusal may make other requests of the client wait, whatever they cost."""
        return max(
            (
                max(0, s.reset_us + s.policy.emission_interval_us - s.policy.tolerance_us)
                for s in self.states
                if not s.policy.shadow
            ),
            default=0,
        )


def _debt(tat: int | None, now: int) -> int:
    # How far the TAT is ahead of now: the sums stay small and exact.
    return 0 if tat is None or tat < now else tat - now


def conforms(tat: int | None, now: int, policy: Policy, cost: int) -> bool:
    return _debt(tat, now) + cost * policy.emission_interval_us <= policy.tolerance_us


def charged(tat: int | None, now: int, policy: Policy, cost: int) -> int:
    """The TAT after spending `cost` units."""
    start = now if tat is None or tat < now else tat
    return start + cost * policy.emission_interval_us


def refunded(tat: int | None, now: int, policy: Policy, cost: int) -> int | None:
    """The TAT after giving `cost` units back; None when the policy is full again."""
    if tat is None:
        return None
    back = tat - cost * policy.emission_interval_us
    return back if back > now else None


def decide(
    tats: Sequence[int | None], now: int, policies: Sequence[Policy], cost: int
) -> tuple[list[bool], list[int | None]]:
    """Each policy's verdict, and the TATs to store. The request is admitted only if every
    enforced policy conforms (see `admitted`); then every policy that conforms is charged (a
    shadow policy that would reject is left alone, as an enforced one would be). A rejected
    request is charged to none."""
    verdicts = [conforms(tat, now, p, cost) for tat, p in zip(tats, policies, strict=True)]
    if not admitted(verdicts, policies):
        return verdicts, list(tats)
    return verdicts, [
        charged(tat, now, p, cost) if ok else tat for tat, p, ok in zip(tats, policies, verdicts, strict=True)
    ]


def admitted(verdicts: Sequence[bool], policies: Sequence[Policy]) -> bool:
    return all(ok for ok, p in zip(verdicts, policies, strict=True) if not p.shadow)


def describe(
    verdicts: Sequence[bool],
    stored: Sequence[int | None],
    now: int,
    policies: Sequence[Policy],
    cost: int,
) -> Decision:
    """The client-facing view of a decision, from the verdicts and the TATs as stored after it."""
    states = []
    for ok, tat, policy in zip(verdicts, stored, policies, strict=True):
        interval = policy.emission_interval_us
        debt = _debt(tat, now)
        remaining = (policy.tolerance_us - debt) // interval
        retry = 0 if ok else debt + cost * interval - policy.tolerance_us
        states.append(
            PolicyState(
                policy=policy,
                conforms=ok,
                remaining=min(max(0, remaining), policy.burst),
                reset_us=debt,
                retry_after_us=max(0, retry),
            )
        )
    return Decision(allowed=admitted(verdicts, policies), cost=cost, states=tuple(states))


def expiry_us(tat: int, now: int) -> int:
    """How long a stored TAT matters: after it has passed, the client is full and it can go."""
    return max(0, tat - now)
