"""The one admission pipeline (`keel.admission`), over the real limiter and shedder: what it
refuses, in which order, and what it charges and gives back. Every protocol's admission is this
pipeline plus a translation, so what holds here holds for REST, GraphQL and gRPC alike."""

from __future__ import annotations

from keel.admission import Admission, Caller, Outcome, Refusal, Ticket, bearer_token, client_identity
from keel.admission.operations import DEFAULT_COSTS, OTHER, PROFILES_GET, PROFILES_LIST
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import Unauthenticated
from keel.observability.metrics import Metrics
from keel.ratelimit.catalog import RateLimitCatalog
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


def _admission(*, shedding_limit: int | None = None) -> tuple[Admission, LoadShedder | None]:
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
    guard = RateLimitGuard(InMemoryRateLimiter(), Metrics())
    return Admission(FakeKeys(), catalog, guard, shedder), shedder


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
