"""GCRA arithmetic: one stored value per client and policy, the theoretical arrival time (TAT).

Pure functions on microsecond timestamps, shared by the in-memory limiter and by the Python side
of the Redis limiter (whose Lua script makes the same decision on the server; the test suite
checks the two agree). A missing TAT means a client that has been idle long enough to be full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from keel.ratelimit.policy import MICROSECONDS, Policy

_SLACK_US = 0.5


@dataclass(frozen=True, slots=True)
class PolicyState:
    policy: Policy
    conforms: bool  # this policy alone would admit the request
    remaining: int  # units that could be spent right now, after this decision
    reset_seconds: float  # until the policy is back to its full burst
    retry_after_seconds: float  # 0 when conforming; else the wait until the request would conform


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    cost: int
    states: tuple[PolicyState, ...]
    degraded: bool = False  # decided locally because the shared store was unavailable

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
        return min(enforced, key=lambda s: (s.remaining, -s.reset_seconds), default=None)

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds, rounded up: never earlier than the real refill time."""
        wait = max((s.retry_after_seconds for s in self.violated), default=0.0)
        return math.ceil(wait) if wait > 0 else 0


def conforms(tat: float | None, now: float, policy: Policy, cost: int) -> bool:
    # In terms of the debt (how far the TAT is ahead of now), which keeps the sums small: with
    # absolute timestamps a request costing exactly the burst could be refused by rounding.
    # Half a microsecond of slack absorbs what rounding is left (Redis works on epoch
    # microseconds, ~1.8e15, where a double resolves only a quarter of a microsecond).
    debt = 0.0 if tat is None or tat < now else tat - now
    return debt + cost * policy.emission_interval_us <= policy.tolerance_us + _SLACK_US


def charged(tat: float | None, now: float, policy: Policy, cost: int) -> float:
    """The TAT after spending `cost` units."""
    start = now if tat is None or tat < now else tat
    return start + cost * policy.emission_interval_us


def refunded(tat: float | None, now: float, policy: Policy, cost: int) -> float | None:
    """The TAT after giving `cost` units back; None when the policy is full again."""
    if tat is None:
        return None
    back = tat - cost * policy.emission_interval_us
    return back if back > now else None


def decide(
    tats: Sequence[float | None], now: float, policies: Sequence[Policy], cost: int
) -> tuple[list[bool], list[float | None]]:
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
    stored: Sequence[float | None],
    now: float,
    policies: Sequence[Policy],
    cost: int,
) -> Decision:
    """The client-facing view of a decision, from the verdicts and the TATs as stored after it."""
    states = []
    for ok, tat, policy in zip(verdicts, stored, policies, strict=True):
        interval = policy.emission_interval_us
        debt = 0.0 if tat is None or tat < now else tat - now
        remaining = math.floor((policy.tolerance_us - debt + _SLACK_US) / interval)
        retry = 0.0 if ok else (debt + cost * interval - policy.tolerance_us) / MICROSECONDS
        states.append(
            PolicyState(
                policy=policy,
                conforms=ok,
                remaining=min(max(0, remaining), policy.burst),
                reset_seconds=debt / MICROSECONDS,
                retry_after_seconds=max(0.0, retry),
            )
        )
    return Decision(allowed=admitted(verdicts, policies), cost=cost, states=tuple(states))


def expiry_us(tat: float, now: float) -> float:
    """How long a stored TAT matters: after it has passed, the client is full and it can go."""
    return max(0.0, tat - now)
