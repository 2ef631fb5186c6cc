"""Admission by rate limits, the same for every protocol: the per-client concurrency cap, then
one atomic decision over all of the plan's policies; metrics and sampled log lines for both.
Protocol adapters turn the outcome into their own headers and errors.

The concurrency cap is counted twice: here, per process, which refuses without I/O; and, with a
limiter shared by the fleet (Redis), fleet-wide, as a slot taken in the same atomic step as the
decision, so that N processes admit a client's cap in all, not N times it. While Redis answers,
a process's own count never exceeds the fleet's, so the first never refuses what the second
would admit; under the kill switch, and for decisions taken locally while Redis is down, the
process's own count is the only one (docs/fleet.md)."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from keel.observability.metrics import Metrics
from keel.observability.sampled_log import SampledLog
from keel.ratelimit.denials import Denials
from keel.ratelimit.gcra import Decision
from keel.ratelimit.headers import format_ratelimit_header
from keel.ratelimit.policy import RESERVED_POLICY_NAME, Plan
from keel.ratelimit.ports import RateLimiter

CONCURRENCY_POLICY = RESERVED_POLICY_NAME


@dataclass(frozen=True, slots=True)
class RateLimitOutcome:
    allowed: bool
    plan: Plan
    decision: Decision | None  # None when refused by the concurrency cap before any decision
    ratelimit_header: str | None
    slot: str | None = None  # the fleet-wide slot this request holds: `release_slot` gives it back

    @property
    def violated_policies(self) -> list[str]:
        if self.decision is None:
            return [CONCURRENCY_POLICY]
        return [s.policy.name for s in self.decision.violated]

    @property
    def retry_after_seconds(self) -> int:
        if self.decision is None:
            return 1  # a slot frees when one of the client's own requests ends
        return max(1, self.decision.retry_after_seconds)


class RateLimitGuard:
    def __init__(self, limiter: RateLimiter, metrics: Metrics, *, fleet_slots: bool = True) -> None:
        """`fleet_slots` False: the concurrency cap is this process's count alone, even with a
        limiter shared by the fleet (no slot asked of it)."""
        self._limiter = limiter
        self._fleet_slots = fleet_slots
        self._metrics = metrics
        self._in_flight: dict[str, int] = {}
        # Names of fleet-wide slots: unique to this process, then to each request.
        self._slot_names = (f"{secrets.token_hex(8)}:{n}" for n in itertools.count())
        # Told once each time the kill switch is seen thrown (the proxy's refusals withdrawn).
        self.on_switched_off: Callable[[], None] | None = None
        self._seen_off = False
        self._decision_series: dict[tuple[str, str], Counter] = {}
        self._rejections = SampledLog("keel.ratelimit")
        self._denials = Denials()
        # By `Decision.degraded`: decided locally, or by the shared limiter.
        self._decision_duration = {
            degraded: metrics.ratelimit_decision_duration.labels("local" if degraded else "shared")
            for degraded in (False, True)
        }

    async def admit(self, client: str, plan: Plan, cost: int, *, hold: bool = True) -> RateLimitOutcome:
        """On `allowed`, the caller must call `release(client)` when the request ends, and
        `release_slot(client, outcome.slot)` before its answer leaves. `hold` False: a charge
        for a request that will not run, which takes no fleet-wide slot."""
        switched_off = await self._limiter.switched_off()
        if switched_off != self._seen_off:
            self._seen_off = switched_off
            if switched_off and self.on_switched_off is not None:
                self.on_switched_off()
        # Read after the await: other requests of this client may have come and gone meanwhile.
        in_flight = self._in_flight.get(client, 0)
        if switched_off:
            # The kill switch: no cap, no remembered refusal; the limiter admits without charging.
            self._in_flight[client] = in_flight + 1
            try:
                decision = await self._limiter.acquire(client, plan, cost)
            except BaseException:
                self.release(client)
                raise
            if not decision.allowed:  # switched back on, or Redis unreachable: a real decision
                self.release(client)
            return RateLimitOutcome(decision.allowed, plan, decision, format_ratelimit_header(decision))
        refusal = self._local_refusal(client, plan, cost, in_flight)
        if refusal is not None:
            return refusal
        # The slot is taken before the decision, which may wait on Redis: concurrent requests
        # of one client must not all pass the cap while the first one is being decided.
        self._in_flight[client] = in_flight + 1
        slot = next(self._slot_names) if hold and self._fleet_slots else None
        asked_at = self._denials.now()
        started = time.perf_counter()
        try:
            decision = await self._limiter.acquire(client, plan, cost, slot)
        except BaseException:
            self.release(client)
            raise
        self._decision_duration[decision.degraded].observe(time.perf_counter() - started)
        if decision.over_cap:  # the fleet holds all of the client's slots
            self.release(client)
            return self._over_cap(client, plan)
        # A degraded decision is declared with the share it was made under (`r <= q`, `t <= w`).
        plan = decision.plan or plan
        if not decision.allowed:
            self.release(client)
            if not decision.degraded:
                self._denials.remember(client, plan, decision, asked_at)
            self._refused(client, plan, decision)
            return RateLimitOutcome(False, plan, decision, format_ratelimit_header(decision))
        self._denials.forget(client)  # its debts have moved on; only Redis knows them now
        for state in decision.states:
            if state.conforms:
                self._count(state.policy.name, "allowed")
            else:
                self._count(state.policy.name, "shadow_rejected")
        return RateLimitOutcome(
            decision.allowed,
            plan,
            decision,
            format_ratelimit_header(decision),
            slot if decision.slot_held else None,
        )

    def known_refusal(self, client: str, plan: Plan, cost: int) -> RateLimitOutcome | None:
        """The refusal `admit` would give now, when this process can tell it without asking
        the shared limiter (the concurrency cap, a remembered refusal); None otherwise. Never
        admits, takes no slot and does no I/O, so it can run before anything else. Unless this
        process read the kill switch within its refresh interval (and it was not thrown), the
        request is left to `admit`, which reads it."""
        if self._limiter.switched_off_seen() is not False:
            return None
        return self._local_refusal(client, plan, cost, self._in_flight.get(client, 0))

    def _local_refusal(self, client: str, plan: Plan, cost: int, in_flight: int) -> RateLimitOutcome | None:
        if in_flight >= plan.concurrency:
            return self._over_cap(client, plan)
        remembered = self._denials.refusal(client, plan, cost)
        if remembered is not None:
            self._refused(client, plan, remembered)
            return RateLimitOutcome(False, plan, remembered, format_ratelimit_header(remembered))
        return None

    def _over_cap(self, client: str, plan: Plan) -> RateLimitOutcome:
        self._count(CONCURRENCY_POLICY, "rejected")
        self._rejections.warning("rate_limited", client=client, plan=plan.name, policies=[CONCURRENCY_POLICY])
        return RateLimitOutcome(False, plan, None, f'"{CONCURRENCY_POLICY}";r=0')

    def _refused(self, client: str, plan: Plan, decision: Decision) -> None:
        for state in decision.states:
            if not state.conforms:
                self._count(state.policy.name, "shadow_rejected" if state.policy.shadow else "rejected")
        self._rejections.warning(
            "rate_limited", client=client, plan=plan.name, policies=[s.policy.name for s in decision.violated]
        )

    def release(self, client: str) -> None:
        """This process's count of the client's requests in flight (no I/O)."""
        left = self._in_flight[client] - 1
        if left:
            self._in_flight[client] = left
        else:
            del self._in_flight[client]

    async def release_slot(self, client: str, slot: str) -> None:
        """The fleet-wide slot `admit` took (`RateLimitOutcome.slot`)."""
        await self._limiter.release_slot(client, slot)

    async def refund(self, client: str, plan: Plan, cost: int) -> None:
        self._denials.forget(client)
        await self._limiter.refund(client, plan, cost)

    async def close(self) -> None:
        await self._limiter.close()

    def _count(self, policy: str, outcome: str) -> None:
        series = self._decision_series.get((policy, outcome))
        if series is None:
            series = self._decision_series[(policy, outcome)] = self._metrics.ratelimit_decisions.labels(
                policy, outcome
            )
        series.inc()
