"""The one admission pipeline (`keel.admission`), over the real limiter and shedder: what it
refuses, in which order, and what it charges and gives back. Every protocol's admission is this
pipeline plus a translation, so what holds here holds for REST, GraphQL and gRPC alike."""

from __future__ import annotations

import dataclasses

from keel.admission import Admission, Caller, Outcome, Refusal, Ticket, bearer_token, client_identity
from keel.admission.operations import DEFAULT_COSTS, OTHER, PROFILES_GET, PROFILES_LIST
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import Unauthenticated
from keel.observability.metrics import Metrics
from keel.ratelimit.catalog import RateLimitCatalog
from keel.ratelimit.gcra import Decision
from keel.ratelimit.guard import RateLimitGuard
from keel.ratelimit.memory import InMemoryRateLimiter
from keel.ratelimit.policy import Plan, Policy
from keel.resilience.adaptive_limit import GradientLimit
from keel.resilience.load_shedder import LoadShedder, Priority

READER = Principal("k1", frozenset({Scope.PROFILES_READ}), "2026-11-28", plan="tight")
EDGE = Principal("edge1", frozenset({Scope.EDGE}), "2026-11-28", plan="edge")
TIGHT = Plan("tight", (Policy("burst", quota=10, window_seconds=3600, burst=10),), concurrency=1)
ANONYMOUS = Plan("anonymous", (Policy("burst", quota=10, window_seconds=3600, burst=10),), concurrency=1)
WIDE = Plan("edge", (Policy("burst", quota=100, window_seconds=3600, burst=100),), concurrency=5)


class FakeKeys:
    """The `CallerAuthenticator` port, in memory: one known token."""

    def __init__(self) -> None:
        self.lookups = 0

    async def authenticate(self, token: str | None) -> Principal:
        self.lookups += 1
        if token == "good":
            return READER
        raise Unauthenticated("unknown key")

    def known(self, token: str) -> Principal | None:
        return READER if token == "good" else None


class Told:
    """The `RefusalPublisher` port, recording what the pipeline passes on to the proxy."""

    def __init__(self) -> None:
        self.refusals: list[tuple[str, int]] = []
        self.refunds: list[str] = []

    def refused(self, key_id: str, wait_us: int) -> None:
        self.refusals.append((key_id, wait_us))

    def refunded(self, key_id: str) -> None:
        self.refunds.append(key_id)


class DegradedLimiter(InMemoryRateLimiter):
    """Every decision as one taken while the shared limiter was down (this process's share)."""

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        return dataclasses.replace(await super().acquire(client, plan, cost, slot), degraded=True)


def _admission(
    *,
    shedding_limit: int | None = None,
    refusals: Told | None = None,
    limiter: InMemoryRateLimiter | None = None,
) -> tuple[Admission, LoadShedder | None]:
    catalog = RateLimitCatalog.build(
        plans={"tight": TIGHT, "anonymous": ANONYMOUS, "edge": WIDE},
        default_plan="tight",
        anonymous_plan="anonymous",
        costs=DEFAULT_COSTS,
    )
    shedder = None
    if shedding_limit is not None:
        limit = GradientLimit(initial=shedding_limit, minimum=shedding_limit, maximum=shedding_limit)
        shedder = LoadShedder(limit)
    guard = RateLimitGuard(limiter if limiter is not None else InMemoryRateLimiter(), Metrics())
    return Admission(FakeKeys(), catalog, guard, shedder, refusals), shedder


def test_one_bearer_parser_and_one_client_identity() -> None:
    assert bearer_token("Bearer  keel_x ") == "keel_x"
    assert bearer_token("bearer keel_x") == "keel_x"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None
    assert client_identity(READER, "10.0.0.1") == "key:k1"
    assert client_identity(None, "10.0.0.1") == "ip:10.0.0.1"
    # An edge acting for a caller runs as the caller and pays with its own key.
    assert Caller(READER, "10.0.0.1", charged=EDGE).client == "key:edge1"


async def test_identify_limits_an_unknown_key_by_address_and_keeps_the_reason() -> None:
    admission, _ = _admission()
    unknown = await admission.identify("bad", lambda: "192.0.2.1")
    assert unknown.principal is None
    assert isinstance(unknown.error, Unauthenticated)
    assert unknown.client == "ip:192.0.2.1"
    assert admission.identify_now("bad", lambda: "192.0.2.1") is None  # needs a lookup: not early
    known = admission.identify_now("good", lambda: "192.0.2.1")
    assert known is not None
    assert known.client == "key:k1"


async def test_quota_refusal_names_the_policy_and_the_wait() -> None:
    admission, _ = _admission()
    caller = Caller(READER, "192.0.2.1")
    ticket = await admission.enter(caller, PROFILES_LIST)  # 10 units: the whole burst
    assert isinstance(ticket, Ticket)
    await ticket.finish(Outcome(succeeded=True))
    refused = await admission.enter(caller, PROFILES_GET)
    assert isinstance(refused, Refusal)
    assert refused.kind == "quota"
    assert refused.violated_policies == ["burst"]
    assert refused.retry_after_seconds >= 1
    assert refused.detail.startswith("Request quota exceeded (burst); retry after")
    # Known to this process now: refused early, without I/O, the same way.
    early = admission.try_refuse_now(caller, PROFILES_GET)
    assert early is not None
    assert early.kind == "quota"


async def test_finish_gives_the_slot_back_and_refunds_what_was_unused() -> None:
    admission, _ = _admission()
    caller = Caller(READER, "192.0.2.1")
    first = await admission.enter(caller, PROFILES_LIST)
    assert isinstance(first, Ticket)
    # The plan allows one request in flight: the second is refused by the concurrency cap.
    capped = admission.try_refuse_now(caller, OTHER)
    assert capped is not None
    assert capped.violated_policies == ["concurrency"]
    await first.finish(Outcome(succeeded=True, unused=first.cost))  # a 304: not charged
    again = await admission.enter(caller, PROFILES_LIST)  # the whole burst again: refunded
    assert isinstance(again, Ticket)
    await again.finish(Outcome(succeeded=True))


async def test_shed_requests_are_refused_after_the_limits_and_not_charged() -> None:
    admission, shedder = _admission(shedding_limit=10)
    assert shedder is not None
    busy = [shedder.try_admit(Priority.CRITICAL) for _ in range(8)]  # lists may use 80 %
    caller = Caller(READER, "192.0.2.1")
    shed = await admission.enter(caller, PROFILES_LIST)
    assert isinstance(shed, Refusal)
    assert shed.kind == "shed"
    assert 1 <= shed.retry_after_seconds <= 3
    assert admission.try_refuse_now(caller, PROFILES_LIST) is not None  # still shedding: early
    for admitted_at in busy:
        assert admitted_at is not None
        shedder.release("other", admitted_at)
    # The shed request was refunded: the whole burst is still there.
    served = await admission.enter(caller, PROFILES_LIST)
    assert isinstance(served, Ticket)
    assert shedder.in_flight == 1
    await served.finish(Outcome(succeeded=True))
    assert shedder.in_flight == 0


async def test_a_charge_for_a_request_refused_before_running_is_never_refunded() -> None:
    admission, _ = _admission()
    anonymous = Caller(None, "198.51.100.7")
    for _ in range(10):
        charged = await admission.charge(anonymous, 1)
        assert charged is not None
        assert not isinstance(charged, Refusal)
    refused = await admission.charge(anonymous, 1)
    assert isinstance(refused, Refusal)
    assert refused.kind == "quota"


async def _spend(admission: Admission, caller: Caller, units: int) -> None:
    ticket = await admission.enter(caller, OTHER, cost=units)
    assert isinstance(ticket, Ticket)
    await ticket.finish(Outcome(succeeded=True))


async def test_a_refused_key_paying_for_itself_is_passed_on_with_its_wait_for_one_unit() -> None:
    told = Told()
    admission, _ = _admission(refusals=told)
    reader = Caller(READER, None)
    await _spend(admission, reader, 10)  # the whole burst of 10; one unit back every 360 s
    refused = await admission.enter(reader, PROFILES_GET)
    assert isinstance(refused, Refusal)
    assert len(told.refusals) == 1
    key_id, wait_us = told.refusals[0]
    assert key_id == "k1"
    assert 359_000_000 < wait_us <= 360_000_000
    # Refused again early (remembered, before the framework): told again, so that a proxy that
    # lost the key learns it at its next request.
    assert admission.try_refuse_now(reader, PROFILES_GET) is not None
    assert [k for k, _ in told.refusals] == ["k1", "k1"]
    assert told.refunds == []


async def test_refusals_that_are_not_the_keys_own_are_not_passed_on() -> None:
    told = Told()
    admission, _ = _admission(refusals=told)
    # A caller without a key (limited by address).
    anonymous = Caller(None, "198.51.100.7")
    await _spend(admission, anonymous, 10)
    assert isinstance(await admission.enter(anonymous, PROFILES_GET), Refusal)
    # An edge's quota, spent for one of its callers.
    for_edge = Caller(READER, None, charged=EDGE)
    await _spend(admission, for_edge, 100)
    assert isinstance(await admission.enter(for_edge, PROFILES_GET), Refusal)
    # The concurrency cap (one in flight).
    roomy = Caller(Principal("k2", frozenset({Scope.PROFILES_READ}), "2026-11-28", plan="tight"), None)
    held = await admission.enter(roomy, PROFILES_GET)
    assert isinstance(held, Ticket)
    capped = await admission.enter(roomy, PROFILES_GET)
    assert isinstance(capped, Refusal)
    assert capped.violated_policies == ["concurrency"]
    await held.finish(Outcome(succeeded=True))
    assert told.refusals == []
    # A share decided by this process alone while Redis was down.
    degraded_told = Told()
    degraded, _ = _admission(refusals=degraded_told, limiter=DegradedLimiter())
    await _spend(degraded, Caller(READER, None), 10)
    assert isinstance(await degraded.enter(Caller(READER, None), PROFILES_GET), Refusal)
    assert degraded_told.refusals == []


async def test_units_given_back_to_a_key_are_told_to_the_proxy() -> None:
    told = Told()
    admission, shedder = _admission(refusals=told, shedding_limit=10)
    reader = Caller(READER, None)
    ticket = await admission.enter(reader, PROFILES_GET)
    assert isinstance(ticket, Ticket)
    await ticket.finish(Outcome(succeeded=True, unused=1))  # a 304
    assert told.refunds == ["k1"]
    assert shedder is not None
    busy = [shedder.try_admit(Priority.CRITICAL) for _ in range(8)]
    shed = await admission.enter(reader, PROFILES_LIST)  # shed, and refunded
    assert isinstance(shed, Refusal)
    assert told.refunds == ["k1", "k1"]
    for admitted_at in busy:
        assert admitted_at is not None
        shedder.release("other", admitted_at)
    # Not the key's own units: a caller without a key, an edge's quota spent for its caller.
    for caller in (Caller(None, "198.51.100.7"), Caller(READER, None, charged=EDGE)):
        ticket = await admission.enter(caller, PROFILES_GET)
        assert isinstance(ticket, Ticket)
        await ticket.finish(Outcome(succeeded=True, unused=1))
    assert told.refunds == ["k1", "k1"]
