"""Rate limits and load shedding as a REST client sees them: RateLimit headers on every API
response, 429 problems with a truthful Retry-After, free 304s, the per-client concurrency cap,
anonymous callers limited by address, plans per key, the kill switch, and fast 503s when the
service sheds load. On the in-process limiter and on a real Redis."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from keel.api.application import build_http_app
from keel.bootstrap.container import Services
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key
from tests.e2e.conftest import MODES, Deployment, bearer, deploy
from tests.e2e.test_rest_profiles import assert_problem, body
from tests.structured_fields import parse_named_list

TIGHT_PLANS = {
    "standard": {
        "policies": [{"name": "burst", "quota": 1, "window_seconds": 60, "burst": 12}],
        "concurrency": 1,
    },
    "partner": {"policies": [{"name": "burst", "quota": 1000, "window_seconds": 1, "burst": 1000}]},
    "anonymous": {"policies": [{"name": "burst", "quota": 1, "window_seconds": 60, "burst": 10}]},
}


class Harness:
    def __init__(self, keel: Services, client: httpx.AsyncClient, serving: Services | None = None) -> None:
        self.keel = keel
        self.client = client
        self.serving = serving or keel

    async def in_flight(self, count: int) -> None:
        """Wait until `count` requests hold a slot under the serving process's concurrency limit
        (an edge resolves a new key through its core first, which takes a moment)."""
        shedder = self.serving.shedder
        assert shedder is not None
        give_up = asyncio.get_running_loop().time() + 30.0  # bounds a hang only
        while asyncio.get_running_loop().time() < give_up:
            if shedder.in_flight >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{shedder.in_flight} requests in flight, not {count}")

    async def key(self, plan: str = "standard") -> dict[str, str]:
        issued = await issue_api_key(
            self.keel.local.store,
            self.keel.local.clock,
            scopes=[Scope.PROFILES_READ, Scope.PROFILES_WRITE],
            api_version="2026-11-28",
            name=plan,
            plan=plan,
        )
        return bearer(issued.token)


class HeldWrites:
    """Creates held open on the server: each POST's body arrives only on `release()`, so the
    request occupies a concurrency slot (per key and per process) until then."""

    def __init__(self, client: httpx.AsyncClient, key: dict[str, str], count: int, prefix: str) -> None:
        self._release = asyncio.Event()
        headers = {**key, "Content-Type": "application/json"}
        self._writes = [
            asyncio.create_task(
                client.post("/v1/profiles", content=self._body(f"{prefix}{i}"), headers=headers)
            )
            for i in range(count)
        ]

    async def _body(self, handle: str) -> AsyncIterator[bytes]:
        await self._release.wait()
        yield json.dumps(body(handle=handle, email=f"{handle}@example.com")).encode()

    async def release(self) -> list[int]:
        self._release.set()
        return [(await write).status_code for write in self._writes]


async def _harness(
    settings: Settings, client_address: str = "198.51.100.1", mode: str = "monolith"
) -> tuple[Harness, Deployment]:
    """A client of Keel's REST API: a monolith, or an edge whose limits are its own and whose
    operations run on a core over gRPC (keys are issued on the core)."""
    deployment = await deploy(settings, mode)
    serving = deployment.serving
    app = build_http_app(serving.settings, serving.metrics)
    app.state.services = serving
    transport = httpx.ASGITransport(app=app, client=(client_address, 4000))
    client = httpx.AsyncClient(transport=transport, base_url="http://keel.test")
    return Harness(deployment.core, client, serving), deployment


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(params=["memory", "redis"])
def limiter_settings(request: pytest.FixtureRequest, sqlite_url: str) -> dict[str, Any]:
    options: dict[str, Any] = {"database_url": sqlite_url, "ratelimit_plans": TIGHT_PLANS}
    if request.param == "redis":
        options["redis_url"] = request.getfixturevalue("redis_url")
        _forget_limits(options["redis_url"])  # tests share the session's Redis: start clean
    return options


def _forget_limits(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match="keel:rl:*"):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
async def harness(limiter_settings: dict[str, Any], mode: str) -> AsyncIterator[Harness]:
    built, keel = await _harness(Settings(**limiter_settings), mode=mode)
    async with built.client:
        yield built
    await keel.close()


async def test_every_api_response_describes_the_limits(harness: Harness) -> None:
    key = await harness.key()
    response = await harness.client.post("/v1/profiles", json=body(), headers=key)
    assert response.status_code == 201
    assert parse_named_list(response.headers["ratelimit-policy"]) == [
        # The burst of 12, refilled at one unit a minute: 720 s.
        ("burst", {"q": 12, "w": 720, "qu": "keel-cost"}),
        ("concurrency", {"q": 1, "qu": "concurrency"}),
    ]
    # A write costs 5 of the burst of 12.
    assert parse_named_list(response.headers["ratelimit"]) == [("burst", {"r": 7, "t": 300})]
    missing = await harness.client.get("/v1/profiles/eu1_01J00000000000000000000000", headers=key)
    assert missing.status_code == 404
    assert parse_named_list(missing.headers["ratelimit"])[0][1]["r"] == 6


async def test_over_the_quota_is_a_429_problem_with_a_truthful_retry_after(harness: Harness) -> None:
    key = await harness.key()
    loop = asyncio.get_running_loop()
    before_charge = loop.time()
    statuses = [(await harness.client.get("/v1/profiles", headers=key)).status_code for _ in range(2)]
    assert statuses == [200, 429]  # a list costs 10 of the burst of 12
    rejected = await harness.client.get("/v1/profiles", headers=key)
    since_charge = loop.time() - before_charge
    problem = assert_problem(rejected, 429, "quota-exceeded")
    assert problem["violated_policies"] == ["burst"]
    # 8 units short at one unit a minute: never earlier than the real refill time.
    assert int(rejected.headers["retry-after"]) >= 8 * 60
    # The rule, not a race with the clock: the 10 units charged come back over 600 s from the
    # first list, of which `since_charge` (however long this machine took) have passed; t is
    # whole seconds rounded up.
    [(name, params)] = parse_named_list(rejected.headers["ratelimit"])
    assert (name, params["r"]) == ("burst", 2)
    reset = params["t"]
    assert isinstance(reset, int), params
    assert 600 - math.ceil(since_charge) <= reset <= 600
    # Cheaper requests that still fit are admitted.
    assert (
        await harness.client.get("/v1/profiles/eu1_01J00000000000000000000000", headers=key)
    ).status_code == 404


async def test_not_modified_responses_are_free(harness: Harness) -> None:
    key = await harness.key()
    created = await harness.client.post("/v1/profiles", json=body(), headers=key)
    location, tag = created.headers["location"], created.headers["etag"]
    conditional = {**key, "If-None-Match": tag}
    statuses = [(await harness.client.get(location, headers=conditional)).status_code for _ in range(30)]
    assert statuses == [304] * 30
    assert (
        parse_named_list((await harness.client.get(location, headers=key)).headers["ratelimit"])[0][1]["r"]
        == 6
    )


async def test_each_client_has_its_own_quota(harness: Harness) -> None:
    greedy, modest = await harness.key(), await harness.key()
    for _ in range(3):
        await harness.client.get("/v1/profiles", headers=greedy)
    assert (await harness.client.get("/v1/profiles", headers=greedy)).status_code == 429
    assert (await harness.client.get("/v1/profiles", headers=modest)).status_code == 200


async def test_plans_are_assigned_per_key(harness: Harness) -> None:
    partner = await harness.key("partner")
    statuses = [(await harness.client.get("/v1/profiles", headers=partner)).status_code for _ in range(20)]
    assert statuses == [200] * 20
    response = await harness.client.get("/v1/profiles", headers=partner)
    assert parse_named_list(response.headers["ratelimit-policy"])[0] == (
        "burst",
        {"q": 1000, "w": 1, "qu": "keel-cost"},
    )


async def test_anonymous_and_unknown_keys_are_limited_by_address(harness: Harness) -> None:
    unknown = bearer("keel_nosuchkey_secret")
    statuses = [(await harness.client.get("/v1/profiles", headers=unknown)).status_code for _ in range(2)]
    assert statuses == [401, 429]  # key guessing is limited too
    assert (await harness.client.get("/v1/profiles")).status_code == 429  # same address


async def test_the_concurrency_cap_refuses_a_second_request_in_flight(harness: Harness) -> None:
    key = await harness.key()
    # Warm: the first decision on Redis also opens a connection and reads the kill switch.
    await harness.client.get("/v1/profiles/eu1_01J00000000000000000000000", headers=key)
    held = HeldWrites(harness.client, key, 1, "first")
    await harness.in_flight(1)
    second = await harness.client.get("/v1/profiles/eu1_01J00000000000000000000000", headers=key)
    problem = assert_problem(second, 429, "quota-exceeded")
    assert problem["violated_policies"] == ["concurrency"]
    assert await held.release() == [201]
    after = await harness.client.get("/v1/profiles/eu1_01J00000000000000000000000", headers=key)
    assert after.status_code == 404
    assert parse_named_list(after.headers["ratelimit"])[0][1]["r"] == 12 - 1 - 5 - 1  # read, write, read


async def test_known_refusals_are_answered_before_the_framework(harness: Harness) -> None:
    key = await harness.key()
    await harness.client.get("/v1/profiles", headers=key)  # 10 of the burst of 12
    decided = await harness.client.get("/v1/profiles", headers=key)
    assert decided.status_code == 429
    assert "traceparent" in decided.headers  # decided by the limiter, inside the request envelope
    early = await harness.client.get("/v1/profiles", headers={**key, "X-Request-Id": "abuse-1"})
    problem = assert_problem(early, 429, "quota-exceeded")
    # Remembered: answered before the envelope and its span, with the same headers and body.
    assert "traceparent" not in early.headers
    assert early.headers["x-request-id"] == problem["request_id"] == "abuse-1"
    assert problem["violated_policies"] == ["burst"]
    assert abs(int(early.headers["retry-after"]) - int(decided.headers["retry-after"])) <= 1
    assert early.headers["ratelimit-policy"] == decided.headers["ratelimit-policy"]
    assert parse_named_list(early.headers["ratelimit"])[0][0] == "burst"
    # A key this process does not know yet is looked up by the full path, never refused here.
    unknown = await harness.client.get("/v1/profiles", headers=bearer("keel_nosuchkey_secret"))
    assert unknown.status_code == 401  # and charged to the address: a list costs 10 of its 10
    assert (await harness.client.get("/v1/profiles")).status_code == 429
    anonymous = await harness.client.get("/v1/profiles")
    assert anonymous.status_code == 429
    assert "traceparent" not in anonymous.headers
    assert len(anonymous.headers["x-request-id"]) == 32  # made up when the caller sent none
    metrics = (await harness.client.get("/metrics")).text
    assert 'keel_http_requests_total{method="GET",route="/v1/*",status="429"} 4.0' in metrics
    # Both paths label their refusals alike, under /v1/: the SLO rules count them.
    assert 'route="unmatched",status="429"' not in metrics


async def test_the_first_authorization_header_is_the_caller_on_both_paths(harness: Harness) -> None:
    key = await harness.key()
    missing = "/v1/profiles/eu1_01J00000000000000000000000"
    assert (await harness.client.get(missing, headers=key)).status_code == 404  # now known here
    both = [("Authorization", "Bearer keel_nosuchkey_secret"), ("Authorization", key["Authorization"])]
    assert (await harness.client.get(missing, headers=both)).status_code == 401


async def test_a_failing_early_check_leaves_the_request_to_the_full_path(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await harness.key()
    missing = "/v1/profiles/eu1_01J00000000000000000000000"
    assert (await harness.client.get(missing, headers=key)).status_code == 404
    guard = harness.serving.rate_limits
    assert guard is not None

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the early check")

    monkeypatch.setattr(guard, "known_refusal", broken)
    answer = await harness.client.get(missing, headers=key)
    assert answer.status_code == 404  # decided and served as usual, not a bare 500
    assert "traceparent" in answer.headers


async def test_health_and_metrics_are_never_limited(harness: Harness) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        statuses = {(await harness.client.get(path)).status_code for _ in range(25)}
        assert statuses == {200}
    metrics = (await harness.client.get("/metrics")).text
    assert "keel_ratelimit_decisions_total" in metrics
    assert "keel_adaptive_concurrency_limit" in metrics


async def test_trusted_proxy_hops_separate_clients_behind_a_proxy(sqlite_url: str, mode: str) -> None:
    settings = Settings(database_url=sqlite_url, ratelimit_plans=TIGHT_PLANS, trusted_proxy_hops=1)
    built, keel = await _harness(settings, client_address="10.0.0.1", mode=mode)
    async with built.client:
        first = {"X-Forwarded-For": "spoofed, 203.0.113.1"}
        second = {"X-Forwarded-For": "spoofed, 203.0.113.2"}
        answer = await built.client.get("/v1/profiles", headers=first)
        assert answer.status_code == 401, answer.text
        assert (await built.client.get("/v1/profiles", headers=first)).status_code == 429
        assert (await built.client.get("/v1/profiles", headers=second)).status_code == 401
    await keel.close()


async def test_the_kill_switch_turns_limits_off(sqlite_url: str, mode: str) -> None:
    settings = Settings(database_url=sqlite_url, ratelimit_plans=TIGHT_PLANS, ratelimit_enabled=False)
    built, keel = await _harness(settings, mode=mode)
    async with built.client:
        key = await built.key()
        responses = [await built.client.get("/v1/profiles", headers=key) for _ in range(5)]
        assert [r.status_code for r in responses] == [200] * 5
        assert "ratelimit" not in responses[0].headers
    await keel.close()


async def test_load_shedding_refuses_sheddable_work_first_with_a_fast_503(sqlite_url: str, mode: str) -> None:
    settings = Settings(
        database_url=sqlite_url,
        concurrency_limit_initial=5,
        concurrency_limit_min=5,
        concurrency_limit_max=5,
    )
    built, keel = await _harness(settings, mode=mode)
    async with built.client:
        key = await built.key()
        held = HeldWrites(built.client, key, 4, "user")
        await built.in_flight(4)
        # Four of five slots in use: a list (sheddable, 80 % of the limit) is refused, a read
        # of one profile (critical, the whole limit) is not.
        shed = await built.client.get("/v1/profiles", headers=key)
        assert_problem(shed, 503, "temporary-reduced-capacity")
        assert 1 <= int(shed.headers["retry-after"]) <= 3
        assert "traceparent" in shed.headers  # the first one starts the shedding, inside
        read = await built.client.get("/v1/profiles/eu1_01J00000000000000000000000", headers=key)
        assert read.status_code == 404
        assert (await built.client.get("/healthz")).status_code == 200
        # While it lasts, the priority is shed before the framework (no span), as fast 503s.
        again = await built.client.get("/v1/profiles", headers=key)
        assert_problem(again, 503, "temporary-reduced-capacity")
        assert "traceparent" not in again.headers
        assert again.headers["x-request-id"]
        assert await held.release() == [201] * 4
        assert (await built.client.get("/v1/profiles", headers=key)).status_code == 200
        assert 'keel_load_shed_total{priority="sheddable"} 2.0' in (await built.client.get("/metrics")).text
    await keel.close()


async def test_the_kill_switch_reaches_running_processes_within_a_second(
    redis_url: str, sqlite_url: str, mode: str
) -> None:
    _forget_limits(redis_url)
    settings = Settings(database_url=sqlite_url, ratelimit_plans=TIGHT_PLANS, redis_url=redis_url)
    built, keel = await _harness(settings, mode=mode)
    switch = redis.Redis.from_url(redis_url)
    try:
        async with built.client:
            key = await built.key()
            for _ in range(2):
                await built.client.get("/v1/profiles", headers=key)
            assert (await built.client.get("/v1/profiles", headers=key)).status_code == 429
            switch.set("keel:rl:switch", "off")
            await asyncio.sleep(1.1)
            statuses = [(await built.client.get("/v1/profiles", headers=key)).status_code for _ in range(5)]
            assert statuses == [200] * 5  # no quota, no remembered refusal
            switch.delete("keel:rl:switch")
            await asyncio.sleep(1.1)
            assert (await built.client.get("/v1/profiles", headers=key)).status_code == 429
    finally:
        switch.delete("keel:rl:switch")
        switch.close()
        await keel.close()


async def test_a_shed_request_is_not_charged(sqlite_url: str, mode: str) -> None:
    settings = Settings(
        database_url=sqlite_url,
        ratelimit_plans=TIGHT_PLANS,
        concurrency_limit_initial=5,
        concurrency_limit_min=5,
        concurrency_limit_max=5,
    )
    built, keel = await _harness(settings, mode=mode)
    async with built.client:
        holder, lister = await built.key("partner"), await built.key("standard")
        held = HeldWrites(built.client, holder, 4, "hold")
        await built.in_flight(4)
        shed = await built.client.get("/v1/profiles", headers=lister)  # costs 10 of a burst of 12
        assert shed.status_code == 503
        assert await held.release() == [201] * 4
        # Charged, the shed list would have left 2 units and this one would be a 429.
        assert (await built.client.get("/v1/profiles", headers=lister)).status_code == 200
    await keel.close()
