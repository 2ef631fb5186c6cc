"""The one admission pipeline every protocol runs a request through: identify the caller, charge
its rate limits, take a slot under the load shedder; and, when the request ends, give the slot
back and refund what the request did not use.

Protocols only read credentials their own way and translate a `Refusal` into their own answer
(a 429 or 503 problem, a GraphQL error with a code, a gRPC status with details): what is
refused, when, and what is charged is decided here once.

Order, for every protocol: the rate limits first, then shedding, so that requests refused by a
limit (an abuser's) never take a slot nor count in the latencies that steer the adaptive limit.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from keel.domain.errors import KeelError, Unauthenticated
from keel.observability.context import note_caller
from keel.observability.sampled_log import SampledLog
from keel.ratelimit.catalog import RateLimitCatalog
from keel.ratelimit.guard import RateLimitGuard, RateLimitOutcome
from keel.ratelimit.policy import Plan
from keel.ratelimit.ports import RefusalPublisher
from keel.resilience.load_shedder import LoadShedder, Priority
from keel.service.use_cases import CallerAuthenticator

from .identity import ONE_SET_OF_CREDENTIALS, Caller
from .operations import Operation

SHED_DETAIL = "The service is shedding load; retry after the indicated time."
_shed_log = SampledLog("keel.load_shedding")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not served. `quota`: a rate limit (`limits` holds the plan's headers);
    `shed`: the process is short of capacity for `priority`. Neither is charged."""

    kind: Literal["quota", "shed"]
    retry_after_seconds: int
    detail: str
    limits: RateLimitOutcome | None = None
    priority: Priority | None = None

    @property
    def violated_policies(self) -> list[str]:
        return self.limits.violated_policies if self.limits is not None else []


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an admitted request ended. `succeeded`: whether its latency may steer the adaptive
    limit (a fast 401 or 404 says nothing about how long the operation takes). `unused`: the
    units to refund (a shed or failed call, a 304, a GraphQL operation cheaper than priced)."""

    succeeded: bool
    unused: int = 0


class Ticket:
    """An admitted request: call `finish` exactly once when it ends (release and refund). A
    protocol that sends its answer before `finish` calls `release_slots` before the answer's
    last bytes leave (see `release_slots`)."""

    __slots__ = (
        "_admitted_at",
        "_guard",
        "_holds",
        "_latency_class",
        "_refunded",
        "_shedder",
        "_slot",
        "client",
        "cost",
        "limits",
        "plan",
    )

    def __init__(
        self,
        guard: RateLimitGuard | None,
        shedder: LoadShedder | None,
        client: str,
        plan: Plan,
        cost: int,
        limits: RateLimitOutcome | None,
        latency_class: str,
        admitted_at: float,
        refunded: Callable[[], None] | None = None,
    ) -> None:
        """`refunded`: told when units go back to the client (the proxy may hold it too long)."""
        self._refunded = refunded
        self._guard = guard
        self._shedder = shedder
        self.client = client
        self.plan = plan
        self.cost = cost
        # The rate-limit decision (None with the limits switched off): the RateLimit headers.
        self.limits = limits
        self._latency_class = latency_class
        self._admitted_at = admitted_at
        # The client's concurrency slots this request holds: this process's count, and the
        # fleet's (with Redis).
        self._holds = guard is not None and limits is not None
        self._slot = limits.slot if limits is not None else None

    async def release_slots(self) -> None:
        """Give back the request's concurrency slots, once: before the answer leaves, so that a
        client that waits for each answer never finds its previous request still holding one
        (`finish` does it too, for an answer it precedes)."""
        guard = self._guard
        if not self._holds or guard is None:
            return
        self._holds = False
        slot, self._slot = self._slot, None
        try:
            if slot is not None:
                await guard.release_slot(self.client, slot)
        finally:
            guard.release(self.client)

    async def finish(self, outcome: Outcome) -> None:
        if self._shedder is not None:
            self._shedder.release(self._latency_class, self._admitted_at, succeeded=outcome.succeeded)
        guard = self._guard
        if guard is not None and self.limits is not None:
            await self.release_slots()
            if outcome.unused > 0:
                await guard.refund(self.client, self.plan, min(outcome.unused, self.cost))
                if self._refunded is not None:
                    self._refunded()


class Admission:
    """Admission for one process. `guard` None: the rate limits are switched off in the settings;
    `shedder` None: load shedding is."""

    def __init__(
        self,
        authenticator: CallerAuthenticator,
        catalog: RateLimitCatalog,
        guard: RateLimitGuard | None,
        shedder: LoadShedder | None,
        refusals: RefusalPublisher | None = None,
    ) -> None:
        """`refusals`: where the shared limiter's refusals of API keys are passed on (the proxy
        in front, which then refuses those keys itself until they could conform)."""
        self._authenticator = authenticator
        self.catalog = catalog
        self._guard = guard
        self._shedder = shedder
        self._refusals = refusals

    @property
    def rate_limited(self) -> bool:
        return self._guard is not None

    # ------------------------------------------------------------------------ the caller

    async def identify(
        self, token: str | None, address_of: Callable[[], str], *, repeated: bool = False
    ) -> Caller:
        """The caller of a request that presented `token` (None: no key). A missing or invalid
        key is not refused here: the request is limited by its address (`address_of`, asked
        only then: reading it costs a parse), and the operation that needs a caller answers
        with `caller.error`. `repeated`: the request sent its credentials more than once."""
        if repeated:
            return Caller(None, address_of(), Unauthenticated(ONE_SET_OF_CREDENTIALS))
        if not token:
            return Caller(None, address_of())
        try:
            principal = await self._authenticator.authenticate(token)
        except KeelError as error:
            return Caller(None, address_of(), error)
        note_caller(principal.key_id)
        return Caller(principal, None)

    def identify_now(
        self, token: str | None, address_of: Callable[[], str], *, repeated: bool = False
    ) -> Caller | None:
        """The caller when known without I/O (no key, or a key already looked up); None when
        its key must still be looked up, or its credentials are repeated (`identify` says so)."""
        if repeated:
            return None
        if not token:
            return Caller(None, address_of())
        principal = self._authenticator.known(token)
        return Caller(principal, None) if principal is not None else None

    def plan_of(self, caller: Caller) -> Plan:
        payer = caller.payer
        return self.catalog.plan_named(payer.plan if payer is not None else None)

    # ------------------------------------------------------------------------ admission

    def try_refuse_now(self, caller: Caller, operation: Operation) -> Refusal | None:
        """The refusal `enter` would give now, when this process can tell it alone: a client
        over its concurrency cap or known to be over its quota, a priority being shed. No I/O,
        no slot taken, nothing charged: it can run before anything else. While a priority is
        shed its requests are refused as shed before their quota is looked at."""
        guard = self._guard
        if guard is not None:
            known = guard.known_refusal(
                caller.client, self.plan_of(caller), self.catalog.cost_of(operation.name)
            )
            if known is not None:
                if self._refusals is not None:  # the proxy may have lost the key: told again
                    self._pass_on(caller, known, time.monotonic())
                return _quota_refusal(known)
        shedder = self._shedder
        if shedder is not None and shedder.refuses(operation.priority):
            return _shed_refusal(operation.priority)
        return None

    async def enter(
        self,
        caller: Caller,
        operation: Operation,
        *,
        cost: int | None = None,
        latency_class: str | None = None,
    ) -> Ticket | Refusal:
        """Admit a request of `caller` for `operation`: charged `cost` units (default: the
        operation's price), then given a slot of its priority. On a `Ticket`, the request runs
        and `ticket.finish` must follow; a shed request is refunded here. `latency_class`: what
        the adaptive limit compares the request's latency with (default: the operation)."""
        units = self.catalog.cost_of(operation.name) if cost is None else cost
        plan = self.plan_of(caller)
        client = caller.client
        guard = self._guard
        limits: RateLimitOutcome | None = None
        if guard is not None:
            asked = time.monotonic() if self._refusals is not None else 0.0
            limits = await guard.admit(client, plan, units)
            if not limits.allowed:
                self._pass_on(caller, limits, asked)
                return _quota_refusal(limits)
        shedder = self._shedder
        admitted_at = 0.0
        if shedder is not None:
            slot = shedder.try_admit(operation.priority)
            if slot is None:
                if guard is not None and limits is not None:
                    # No service, no charge.
                    guard.release(client)
                    if limits.slot is not None:
                        await guard.release_slot(client, limits.slot)
                    await guard.refund(client, plan, units)
                    refunded = self._refunded_of(caller)
                    if refunded is not None:
                        refunded()
                return _shed_refusal(operation.priority)
            admitted_at = slot
        return Ticket(
            guard,
            shedder,
            client,
            plan,
            units,
            limits,
            latency_class or operation.name,
            admitted_at,
            self._refunded_of(caller) if self._refusals is not None and limits is not None else None,
        )

    async def charge(self, caller: Caller, cost: int) -> RateLimitOutcome | Refusal | None:
        """Charge `cost` units for a request refused before it could run (a malformed GraphQL
        document, an unknown gRPC key), so that sending those is rate limited too. Never
        refunded, takes no slot; None with the rate limits switched off."""
        guard = self._guard
        if guard is None:
            return None
        client = caller.client
        asked = time.monotonic() if self._refusals is not None else 0.0
        limits = await guard.admit(client, self.plan_of(caller), cost, hold=False)
        if not limits.allowed:
            self._pass_on(caller, limits, asked)
            return _quota_refusal(limits)
        guard.release(client)
        return limits

    def _refunded_of(self, caller: Caller) -> Callable[[], None] | None:
        """What tells the proxy that units went back to `caller`'s key (None: nothing to tell)."""
        publisher, principal = self._refusals, caller.principal
        if publisher is None or principal is None or caller.charged is not None or principal.end_user:
            return None
        return functools.partial(publisher.refunded, principal.key_id)

    def _pass_on(self, caller: Caller, limits: RateLimitOutcome, asked: float) -> None:
        """Tell the proxy in front of a refused key's wait for one unit: only a refusal the
        limiter decided for the fleet (not the concurrency cap, not a share decided alone while
        Redis was down), of a key paying for itself (an edge's quota is spent for its callers).
        The wait is counted from `asked` (monotonic), before the decision: never later than
        the moment the limiter decided at."""
        publisher, decision, principal = self._refusals, limits.decision, caller.principal
        if publisher is None or decision is None or decision.degraded:
            return
        # An end user is not a key the proxy can tell apart (it reads keys from the header).
        if principal is None or caller.charged is not None or principal.end_user is not None:
            return
        wait = decision.wait_for_one_unit_us - int((time.monotonic() - asked) * 1_000_000)
        if wait > 0:
            publisher.refused(principal.key_id, wait)


def _quota_refusal(limits: RateLimitOutcome) -> Refusal:
    retry_after = limits.retry_after_seconds
    detail = f"Request quota exceeded ({', '.join(limits.violated_policies)}); retry after {retry_after} s."
    return Refusal("quota", retry_after, detail, limits=limits)


def _shed_refusal(priority: Priority) -> Refusal:
    _shed_log.warning("load_shed", priority=priority.name.lower())
    # Jittered, so that refused clients do not all come back in the same second.
    retry_after = random.randint(1, 3)  # noqa: S311 - jitter, not security
    return Refusal("shed", retry_after, SHED_DETAIL, priority=priority)
