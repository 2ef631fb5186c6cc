"""Remembered refusals: after the shared limiter refuses a client, this process knows until when
every request of that client must be refused too, and answers them without asking Redis again.

This never refuses what Redis would admit: a client's TATs only move forward (other processes
can only add to them; the exceptions, refunds of 304s and shed requests, give back little and
only make this conservative by that much). An abuser at 50x its quota therefore costs one Redis
round trip per refill interval, not one per request. What other processes charged meanwhile is
not known here, so a remembered Retry-After can be shorter than Redis's by what they admitted.
The kill switch is the guard's to check before asking here (`RateLimitGuard`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keel.ratelimit.clock import monotonic_us
from keel.ratelimit.gcra import Decision, PolicyState
from keel.ratelimit.policy import Plan, Policy

_PRUNE_AT = 10_000


@dataclass(frozen=True, slots=True)
class _Debt:
    policy: Policy
    clear_at: int  # local monotonic time (µs) at which the policy's TAT reaches now


class Denials:
    def __init__(self, clock: Callable[[], int] = monotonic_us) -> None:
        # Integer microseconds, as the limiters decide: the same exact arithmetic as `gcra`.
        self._clock = clock
        # By client: the plan it was refused under, and every policy's debt.
        self._debts: dict[str, tuple[Plan, tuple[_Debt, ...]]] = {}
        self._prune_at = _PRUNE_AT

    def now(self) -> int:
        """This memory's clock (µs): what `remember`'s `asked_at` is read from."""
        return self._clock()

    def remember(self, client: str, plan: Plan, decision: Decision, asked_at: int | None = None) -> None:
        """`asked_at` (`now()` before the limiter was asked): the debts are counted from then,
        never later than the limiter's own moment of decision."""
        now = self._clock() if asked_at is None else asked_at
        # Every policy's debt, not only the violated ones': the answer to a later request (its
        # Retry-After above all) must account for all of them.
        debts = tuple(_Debt(s.policy, now + s.reset_us) for s in decision.states if not s.policy.shadow)
        if decision.violated:
            if len(self._debts) >= self._prune_at:
                self._prune(now)
            self._debts[client] = (plan, debts)

    def refusal(self, client: str, plan: Plan, cost: int) -> Decision | None:
        """The refusal Redis would give now, or None when only Redis can tell (as when the
        client's plan is no longer the one it was refused under: an admin changed it)."""
        remembered = self._debts.get(client)
        if remembered is None:
            return None
        refused_under, debts = remembered
        if refused_under != plan:
            del self._debts[client]
            return None
        now = self._clock()
        states = []
        for debt in debts:
            policy = debt.policy
            interval = policy.emission_interval_us
            owed = max(0, debt.clear_at - now)
            wait = owed + cost * interval - policy.tolerance_us
            remaining = min(policy.burst, max(0, (policy.tolerance_us - owed) // interval))
            conforms = wait <= 0  # as in gcra.conforms
            states.append(PolicyState(policy, conforms, remaining, owed, 0 if conforms else wait))
        if all(state.conforms for state in states):
            # The request may conform: only the shared limiter can say (and charge it).
            if all(debt.clear_at <= now for debt in debts):
                del self._debts[client]
            return None
        return Decision(allowed=False, cost=cost, states=tuple(states))

    def forget(self, client: str) -> None:
        self._debts.pop(client, None)

    def _prune(self, now: int) -> None:
        """Drop what has lapsed; if that is not enough, the oldest quarter. The next prune comes
        after as many new refusals again, so the cost per refusal stays constant."""
        self._debts = {c: d for c, d in self._debts.items() if any(x.clear_at > now for x in d[1])}
        if len(self._debts) >= _PRUNE_AT:
            for client in list(self._debts)[: len(self._debts) // 4]:
                del self._debts[client]
        self._prune_at = len(self._debts) + _PRUNE_AT // 2
