"""The webhook dispatcher over the in-memory store and an in-memory sender: the signature is the
Standard Webhooks one (checked against the `standardwebhooks` package's own signer), the retry
schedule's bounds, and per-endpoint slots (a hung endpoint holds only its own)."""

from __future__ import annotations

import asyncio
import base64
import random
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from standardwebhooks.webhooks import Webhook

from keel.domain.api_keys import Principal, Scope
from keel.domain.webhooks import DeliveryState, RetrySchedule
from keel.service.attributes import AttributePolicy
from keel.service.profiles import ProfileService
from keel.service.webhook_dispatcher import DispatchObserver, DispatchPolicy, WebhookDispatcher
from keel.service.webhook_ports import SendResult
from keel.service.webhook_signing import signature
from keel.service.webhooks import WebhookAdmin
from tests.fakes import FakeClock, InMemoryStore

ADMIN = Principal("admin", frozenset({Scope.ADMIN}), "2026-11-28")
WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")


class PlainBox:
    """Seals nothing: the unit tests are about dispatching, not storage."""

    def seal(self, secret: bytes) -> str:
        return base64.b64encode(secret).decode()

    def open(self, sealed: str) -> bytes:
        return base64.b64decode(sealed)

    def sealed_with_current_key(self, sealed: str) -> bool:
        return True


class PublicResolver:
    async def addresses(self, host: str) -> list[str]:
        return ["93.184.215.14"]


class ScriptedSender:
    """Answers `status` per URL; a URL in `hung` never answers until released."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.hung: dict[str, asyncio.Event] = {}
        self.sent: list[str] = []

    async def send(
        self, url: str, headers: dict[str, str], body: bytes, timeout_seconds: float
    ) -> SendResult:
        self.sent.append(url)
        if url in self.hung:
            await self.hung[url].wait()
        return SendResult(self.status.get(url, 200), None)

    def host_of(self, url: str) -> str | None:
        return urlsplit(url).hostname

    async def close(self) -> None:
        return None


def test_the_signature_is_the_standard_webhooks_one() -> None:
    secret = bytes(range(32))
    at = datetime(2026, 12, 6, 12, tzinfo=UTC)
    theirs = Webhook(base64.b64encode(secret).decode()).sign("msg_1", at, '{"a":1}')
    assert signature(secret, "msg_1", int(at.timestamp()), b'{"a":1}') == theirs
    assert signature(secret, "msg_2", int(at.timestamp()), b'{"a":1}') != theirs


def test_the_retry_schedule_stays_within_its_jitter_and_ends() -> None:
    schedule = RetrySchedule((timedelta(seconds=10), timedelta(seconds=100)), jitter=0.2)
    rng = random.Random(3)
    waits = [schedule.after_failure(1, rng) for _ in range(200)]
    assert all(w is not None and timedelta(seconds=8) <= w <= timedelta(seconds=12) for w in waits)
    assert len(set(waits)) > 100  # spread, not one value
    second = schedule.after_failure(2, rng)
    assert second is not None
    assert timedelta(seconds=80) <= second <= timedelta(seconds=120)
    assert schedule.after_failure(3, rng) is None
    assert schedule.attempts == 3


@pytest.mark.parametrize("per_endpoint", [1, 3])
async def test_a_hung_endpoint_holds_only_its_own_slots(per_endpoint: int) -> None:
    store, clock, sender = InMemoryStore(), FakeClock(), ScriptedSender()
    admin = WebhookAdmin(store, clock, PlainBox(), PublicResolver(), client_host=sender.host_of)
    hung = await admin.register(ADMIN, "https://hung.example/hook", [], False)
    healthy = await admin.register(ADMIN, "https://healthy.example/hook", [], False)
    sender.hung["https://hung.example/hook"] = asyncio.Event()
    writer = ProfileService(store, clock, AttributePolicy(), "eu1")
    for n in range(5):
        await writer.create_profile(
            WRITER, {"handle": f"user_{n}", "emails": [{"address": f"u{n}@example.com", "primary": True}]}
        )
    dispatcher = WebhookDispatcher(
        store, sender, PlainBox(), PublicResolver(), clock, DispatchPolicy(per_endpoint=per_endpoint)
    )
    passes = 0
    while True:
        await dispatcher.run_once()
        passes += 1
        # Let the healthy attempts finish and record (they never wait on anything external).
        await asyncio.gather(*dispatcher.attempts_of(healthy.endpoint.id))
        async with store.unit_of_work(read_only=True) as uow:
            delivered = await uow.webhooks.deliveries_of(healthy.endpoint.id, DeliveryState.DELIVERED, 100)
        if len(delivered) == 5:
            break
        assert passes < 20
    assert dispatcher.in_flight(hung.endpoint.id) == per_endpoint
    assert sender.sent.count("https://hung.example/hook") == per_endpoint
    sender.hung["https://hung.example/hook"].set()
    await dispatcher.settle()
    await dispatcher.stop()


class RaisingSender(ScriptedSender):
    """A sender breaking its promise never to raise (a bug, or an error nobody foresaw)."""

    async def send(
        self, url: str, headers: dict[str, str], body: bytes, timeout_seconds: float
    ) -> SendResult:
        self.sent.append(url)
        raise RuntimeError("unforeseen")


async def test_an_attempt_that_raises_is_recorded_as_failed_then_dead_lettered() -> None:
    store, clock, sender = InMemoryStore(), FakeClock(), RaisingSender()
    admin = WebhookAdmin(store, clock, PlainBox(), PublicResolver(), client_host=sender.host_of)
    registered = await admin.register(ADMIN, "https://raising.example/hook", [], False)
    await ProfileService(store, clock, AttributePolicy(), "eu1").create_profile(
        WRITER, {"handle": "user_1", "emails": [{"address": "u1@example.com", "primary": True}]}
    )
    failures: list[str] = []
    observer = DispatchObserver(failed=failures.append)
    policy = DispatchPolicy(schedule=RetrySchedule((timedelta(seconds=1),), jitter=0.0))
    dispatcher = WebhookDispatcher(store, sender, PlainBox(), PublicResolver(), clock, policy, observer)
    for _ in range(2):
        await dispatcher.run_once()
        await dispatcher.settle()
        clock.advance(timedelta(seconds=2))
    await dispatcher.stop()
    async with store.unit_of_work(read_only=True) as uow:
        [dead] = await uow.webhooks.deliveries_of(registered.endpoint.id, DeliveryState.DEAD, 10)
    assert (dead.attempts, dead.last_error) == (2, "error")
    assert failures == ["attempt", "attempt"]
    assert len(sender.sent) == 2
