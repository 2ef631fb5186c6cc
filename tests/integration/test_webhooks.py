"""Webhooks over real databases (SQLite and PostgreSQL) and real HTTP receivers on loopback:
deliveries are signed as Standard Webhooks (checked with the `standardwebhooks` package), a
slow, failing or dead endpoint does not hold up a healthy one, retries follow the schedule
(virtual time), dead letters are listed and replayed, a restart mid-retry resumes, and URLs on
non-public addresses are refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import Forbidden, ValidationFailed
from keel.domain.events import PROFILE_CREATED, PROFILE_ERASED, PROFILE_UPDATED
from keel.domain.webhooks import DeliveryState, RetrySchedule, WebhookDelivery, WebhookEndpoint
from keel.service.attributes import AttributePolicy
from keel.service.clock import SystemClock
from keel.service.ports import Clock, Store
from keel.service.profiles import ProfileService
from keel.service.webhook_dispatcher import DispatchObserver, DispatchPolicy, WebhookDispatcher
from keel.service.webhook_ports import AddressResolver, SendResult
from keel.service.webhooks import WebhookAdmin
from keel.storage.migrations.runner import downgrade, migrate
from keel.webhooks.http_sender import HttpWebhookSender, client_host
from keel.webhooks.resolver import SystemResolver
from keel.webhooks.secret_box import AesGcmSecretBox, box_key
from tests.fakes import FakeClock
from tests.integration.conftest import observer
from tests.integration.test_migrations_up_and_down import database, everything, query, revision
from tests.integration.webhook_receivers import down_url, receiver

ADMIN = Principal("admin", frozenset({Scope.ADMIN}), "2026-11-28")
WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
# Bounds only a hang: every wait below ends as soon as its condition holds.
DEADLINE_SECONDS = 30.0
BOX = AesGcmSecretBox(box_key("test-key-" + "x" * 32))


def verify_by_hand(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """docs/events.md's hand-written verifier, as printed there (from the spec, not Keel's code)."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    return any(
        hmac.compare_digest(sig.partition(",")[2], expected)
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


def document(n: int) -> dict[str, Any]:
    return {"handle": f"user_{n}", "emails": [{"address": f"user{n}@example.com", "primary": True}]}


class Counts:
    """A DispatchObserver's record of attempt outcomes."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.dead_letters: int | None = None
        self._recorded = asyncio.Event()

    async def wait_for(self, outcome: str, count: int) -> None:
        """Returns once `count` attempts with that outcome were recorded."""
        while self.outcomes.count(outcome) < count:
            await self._recorded.wait()
            self._recorded.clear()

    def observer(self) -> DispatchObserver:
        def attempted(outcome: str, seconds: float) -> None:
            assert seconds >= 0
            self.outcomes.append(outcome)
            self._recorded.set()

        def dead(count: int) -> None:
            self.dead_letters = count

        return DispatchObserver(attempted=attempted, dead_letters=dead)


def dispatcher(
    store: Store,
    clock: Clock,
    *,
    delays: tuple[int, ...] = (60, 600),
    timeout: float = 10.0,
    per_endpoint: int = 2,
    allow_private: bool = True,
    counts: Counts | None = None,
    resolver: AddressResolver | None = None,
) -> WebhookDispatcher:
    policy = DispatchPolicy(
        schedule=RetrySchedule(tuple(timedelta(seconds=d) for d in delays), jitter=0.2),
        attempt_timeout_seconds=timeout,
        per_endpoint=per_endpoint,
        poll_seconds=0.05,
        allow_private_targets=allow_private,
    )
    observer = (counts or Counts()).observer()
    resolver = resolver or SystemResolver()
    sender = HttpWebhookSender(resolver, allow_private=allow_private)
    return WebhookDispatcher(store, sender, BOX, resolver, clock, policy, observer, rng=random.Random(7))


async def dispatch_once(worker: WebhookDispatcher) -> None:
    """One dispatcher pass, its attempts settled, then the dispatcher stopped and its sender
    closed (on a failure too)."""
    try:
        await worker.run_once()
        await worker.settle()
    finally:
        await worker.stop()
        await worker.sender.close()


def admin(store: Store, clock: Clock, *, allow_private: bool = True) -> WebhookAdmin:
    return WebhookAdmin(
        store, clock, BOX, SystemResolver(), client_host=client_host, allow_private_targets=allow_private
    )


def profiles(store: Store, clock: Clock) -> ProfileService:
    return ProfileService(store, clock, AttributePolicy(), "eu1")


async def deliveries(store: Store, endpoint_id: str) -> list[WebhookDelivery]:
    found: list[WebhookDelivery] = []
    async with store.unit_of_work(read_only=True) as uow:
        for state in DeliveryState:
            found += await uow.webhooks.deliveries_of(endpoint_id, state, 1000)
    return found


async def test_a_delivery_is_signed_as_standard_webhooks_and_verifies_independently(store: Store) -> None:
    clock = SystemClock()  # real time: the verifier refuses timestamps more than 5 minutes off
    async with receiver(200) as endpoint:
        registered = await admin(store, clock).register(ADMIN, endpoint.url, [PROFILE_CREATED], False)
        assert registered.secret.startswith("whsec_")
        assert len(base64.b64decode(registered.secret.removeprefix("whsec_"))) == 32
        created = await profiles(store, clock).create_profile(WRITER, document(1))
        # An update is not among the endpoint's types: it must not be delivered.
        await profiles(store, clock).update_profile(WRITER, created.profile.id, {"bio": "x"})
        await dispatch_once(dispatcher(store, clock))
        [request] = await endpoint.wait_for(1)
    verified = Webhook(registered.secret).verify(request.body, request.headers)
    assert verified["type"] == PROFILE_CREATED
    assert verified["subject"] == created.profile.id
    assert verified["specversion"] == "1.0"
    assert verified["data"]["handle"] == "user_1"
    assert request.headers["webhook-id"] == verified["id"]
    assert request.headers["content-type"] == "application/json"
    assert verify_by_hand(registered.secret, request.headers, request.body)
    assert not verify_by_hand(registered.secret, request.headers, request.body + b" ")
    stale = {**request.headers, "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 301)}
    assert not verify_by_hand(registered.secret, stale, request.body)
    # Negative controls: a changed body, or another secret, does not verify.
    with pytest.raises(WebhookVerificationError):
        Webhook(registered.secret).verify(request.body.replace(b"user_1", b"user_2"), request.headers)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request.body, request.headers)
    [delivery] = await deliveries(store, registered.endpoint.id)
    assert delivery.state is DeliveryState.DELIVERED
    assert delivery.attempts == 1
    assert delivery.last_status == 200


async def test_a_slow_failing_or_dead_endpoint_does_not_hold_up_a_healthy_one(store: Store) -> None:
    clock = FakeClock()
    events = 6
    async with (
        receiver(200) as healthy,
        receiver(500) as failing,
        receiver(hanging=True) as hanging,
    ):
        keel = admin(store, clock)
        ids = {}
        for name, url in (
            ("hanging", hanging.url),
            ("failing", failing.url),
            ("down", down_url()),
            ("healthy", healthy.url),
        ):
            ids[name] = (await keel.register(ADMIN, url, [], False)).endpoint.id
        writer = profiles(store, clock)
        for n in range(events):
            await writer.create_profile(WRITER, document(n))
        # 2 attempts at a time per endpoint: the hanging endpoint holds both of its slots for
        # as long as it hangs, the healthy one must still get every event.
        counts = Counts()
        worker = dispatcher(store, clock, per_endpoint=2, timeout=DEADLINE_SECONDS, counts=counts)
        running = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                await counts.wait_for("delivered", events)
                got = await healthy.wait_for(events)
                # Ordering, not wall-clock: the healthy endpoint received every event while the
                # hanging one has answered nothing, and has never had more than its 2 slots.
                assert len(hanging.received) <= 2
                assert worker.in_flight(ids["hanging"]) == 2
                assert all(d.attempts == 0 for d in await deliveries(store, ids["hanging"]))
                await failing.wait_for(2)
        finally:
            hanging.release(500)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await worker.sender.close()
    assert len({json.loads(r.body)["id"] for r in got}) == events
    healthy_state = await deliveries(store, ids["healthy"])
    assert [d.state for d in healthy_state] == [DeliveryState.DELIVERED] * events
    failed = [d for d in await deliveries(store, ids["failing"]) if d.attempts > 0]
    assert failed
    assert all(d.last_status == 500 and d.last_error == "status" for d in failed)
    down = [d for d in await deliveries(store, ids["down"]) if d.attempts > 0]
    assert down
    assert all(d.last_status is None and d.last_error == "connection" for d in down)
    assert all(d.state is DeliveryState.PENDING for d in failed + down)  # retried later


async def test_an_attempt_that_outlasts_its_timeout_fails_as_a_timeout(store: Store) -> None:
    clock = FakeClock()
    async with receiver(hanging=True) as hanging:
        endpoint = await admin(store, clock).register(ADMIN, hanging.url, [], False)
        await profiles(store, clock).create_profile(WRITER, document(1))
        await dispatch_once(dispatcher(store, clock, timeout=0.2))
        assert len(hanging.received) == 1
    [delivery] = await deliveries(store, endpoint.endpoint.id)
    assert (delivery.state, delivery.attempts, delivery.last_error) == (DeliveryState.PENDING, 1, "timeout")


async def test_retries_follow_the_schedule_then_dead_letters_are_listed_and_replayed(store: Store) -> None:
    clock = FakeClock()
    counts = Counts()
    async with receiver(500) as endpoint:
        keel = admin(store, clock)
        registered = await keel.register(ADMIN, endpoint.url, [], True)
        endpoint_id = registered.endpoint.id
        await profiles(store, clock).create_profile(WRITER, document(1))
        worker = dispatcher(store, clock, delays=(60, 600), counts=counts)

        async def one_pass() -> WebhookDelivery:
            await worker.run_once()
            await worker.settle()
            [delivery] = await deliveries(store, endpoint_id)
            return delivery

        try:
            first = await one_pass()
            assert (first.attempts, len(endpoint.received)) == (1, 1)
            for attempts, delay in ((1, 60), (2, 600)):
                current = (await deliveries(store, endpoint_id))[0]
                assert current.next_attempt_at is not None
                assert current.last_attempt_at is not None
                wait = current.next_attempt_at - current.last_attempt_at
                # The schedule's delay, give or take the 20 % jitter.
                assert timedelta(seconds=delay * 0.8) <= wait <= timedelta(seconds=delay * 1.2)
                # Not a moment before it is due...
                clock.current = current.next_attempt_at - timedelta(seconds=1)
                assert (await one_pass()).attempts == attempts
                assert len(endpoint.received) == attempts
                # ...and attempted once due.
                clock.current = current.next_attempt_at
                assert (await one_pass()).attempts == attempts + 1
                assert len(endpoint.received) == attempts + 1
            dead = (await deliveries(store, endpoint_id))[0]
            assert dead.state is DeliveryState.DEAD
            assert counts.outcomes == ["failed", "failed", "dead"]
            # Every attempt carried the same webhook-id: receivers deduplicate by it.
            assert len({r.headers["webhook-id"] for r in endpoint.received}) == 1

            letters = await keel.dead_letters(ADMIN, endpoint_id, 100)
            assert [d.id for d in letters] == [dead.id]
            with pytest.raises(Forbidden):
                await keel.dead_letters(WRITER, endpoint_id, 100)
            clock.advance(timedelta(days=2))
            assert (await one_pass()).state is DeliveryState.DEAD  # stays parked without a replay
            assert counts.dead_letters == 1

            endpoint.status = 200
            assert await keel.replay(ADMIN, endpoint_id, ["whdl_" + "0" * 32]) == 0
            assert await keel.replay(ADMIN, endpoint_id, None) == 1
            replayed = await one_pass()
            assert (replayed.state, replayed.attempts, replayed.last_status) == (
                DeliveryState.DELIVERED,
                1,
                200,
            )
            assert await keel.dead_letters(ADMIN, endpoint_id, 100) == []
            assert len(endpoint.received) == 4
        finally:
            await worker.stop()
            await worker.sender.close()


async def test_a_restart_mid_retry_and_mid_attempt_resumes_from_the_database(store: Store) -> None:
    clock = FakeClock()
    async with receiver(500) as failing, receiver(hanging=True) as hanging:
        keel = admin(store, clock)
        failing_id = (await keel.register(ADMIN, failing.url, [PROFILE_CREATED], False)).endpoint.id
        hanging_id = (await keel.register(ADMIN, hanging.url, [PROFILE_CREATED], False)).endpoint.id
        await profiles(store, clock).create_profile(WRITER, document(1))

        counts = Counts()
        first = dispatcher(store, clock, timeout=DEADLINE_SECONDS, counts=counts)
        try:
            await first.run_once()
            async with asyncio.timeout(DEADLINE_SECONDS):
                await hanging.wait_for(1)
                await failing.wait_for(1)
                await counts.wait_for("failed", 1)  # the failure is recorded
        finally:
            # The process stops while its attempt on the hanging endpoint is still in flight.
            await first.stop()
            await first.sender.close()
        assert first.in_flight(hanging_id) == 0
        [retrying] = await deliveries(store, failing_id)
        [held] = await deliveries(store, hanging_id)
        assert (retrying.state, retrying.attempts) == (DeliveryState.PENDING, 1)
        assert (held.state, held.attempts) == (DeliveryState.PENDING, 0)  # its outcome never came

        failing.status = 200
        hanging.release(200)
        second = dispatcher(store, clock)  # another process, from what the database holds
        try:
            assert retrying.next_attempt_at is not None
            assert held.next_attempt_at is not None
            clock.current = max(retrying.next_attempt_at, held.next_attempt_at)
            await second.run_once()
            await second.settle()
        finally:
            await second.stop()
            await second.sender.close()
        assert [(d.state, d.attempts) for d in await deliveries(store, failing_id)] == [
            (DeliveryState.DELIVERED, 2)
        ]
        assert [(d.state, d.attempts) for d in await deliveries(store, hanging_id)] == [
            (DeliveryState.DELIVERED, 1)
        ]
        for endpoint in (failing, hanging):
            assert len(endpoint.received) == 2
            assert len({r.headers["webhook-id"] for r in endpoint.received}) == 1


async def test_only_the_endpoints_event_types_and_events_after_registration_are_delivered(
    store: Store,
) -> None:
    clock = FakeClock()
    writer = profiles(store, clock)
    before = await writer.create_profile(WRITER, document(1))  # before any endpoint: never delivered
    async with receiver(200) as updates, receiver(200) as everything:
        keel = admin(store, clock)
        await keel.register(ADMIN, updates.url, [PROFILE_UPDATED], False)
        await keel.register(ADMIN, everything.url, [], False)
        await writer.update_profile(WRITER, before.profile.id, {"bio": "changed"})
        await writer.create_profile(WRITER, document(2))
        await dispatch_once(dispatcher(store, clock))
    assert [json.loads(r.body)["type"] for r in updates.received] == [PROFILE_UPDATED]
    assert sorted(json.loads(r.body)["type"] for r in everything.received) == [
        PROFILE_CREATED,
        PROFILE_UPDATED,
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[2002:a9fe:a9fe::]/latest/meta-data",  # 6to4 of 169.254.169.254
        "http://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
        "http://[::10.0.0.1]/hook",  # IPv4-compatible
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
    ],
)
async def test_urls_on_non_public_addresses_are_refused(store: Store, url: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await admin(store, FakeClock(), allow_private=False).register(ADMIN, url, [], False)
    assert [e.field for e in refused.value.errors] == ["/url"]
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.webhooks.endpoints() == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
        "http:///x",
        "https://ex ample.com/",
        "not a url",
        "http://example.com:0/x",
        "http://example.com/x#fragment",
        "HTTPS://" + "0" * 300,  # a label over 63 characters: no host name (was a 500)
        "https://" + "a." * 130 + "com/",  # over 253 characters
        # Valid for Python's IDNA 2003 codec, refused by the HTTP client's IDNA 2008: no
        # attempt could ever be made (they were stored, and then retried forever).
        "http://\u2603.net/hook",
        "http://xn--n3h.net/hook",
        "http://XN--N3H.net/hook",
    ],
)
async def test_malformed_urls_are_refused(store: Store, url: str) -> None:
    for allow_private in (True, False):
        with pytest.raises(ValidationFailed):
            await admin(store, FakeClock(), allow_private=allow_private).register(ADMIN, url, [], False)


async def test_an_endpoint_holding_personal_data_must_receive_the_erased_event(store: Store) -> None:
    keel = admin(store, FakeClock())
    with pytest.raises(ValidationFailed) as refused:
        await keel.register(ADMIN, "http://127.0.0.1:9/hook", [PROFILE_CREATED], True)
    assert [e.field for e in refused.value.errors] == ["/event_types"]
    assert PROFILE_ERASED in refused.value.errors[0].message
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.webhooks.endpoints() == []
    # Listed, or every type; and an endpoint holding no personal data may want anything.
    for types, holds in (([PROFILE_CREATED, PROFILE_ERASED], True), ([], True), ([PROFILE_CREATED], False)):
        registered = await keel.register(ADMIN, "http://127.0.0.1:9/hook", types, holds)
        assert registered.endpoint.holds_personal_data is holds


async def test_a_public_address_is_accepted_and_a_non_admin_is_refused_before_anything(store: Store) -> None:
    keel = admin(store, FakeClock(), allow_private=False)
    registered = await keel.register(ADMIN, "https://93.184.215.14/hook", [], False)
    assert registered.endpoint.url == "https://93.184.215.14/hook"
    for call in (
        keel.register(WRITER, "https://93.184.215.14/hook", [], False),
        keel.list_endpoints(WRITER),
        keel.get_endpoint(WRITER, registered.endpoint.id),
        keel.delete_endpoint(WRITER, "whep_missing"),
        keel.replay(WRITER, "whep_missing", None),
    ):
        with pytest.raises(Forbidden):
            await call


async def test_delivery_rechecks_the_address_and_never_reaches_a_non_public_one(store: Store) -> None:
    clock = FakeClock()
    async with receiver(200) as endpoint:
        # Registered while allowed; delivered by a dispatcher that does not allow it (the check
        # at every attempt is what stops a name that moved to an internal address).
        registered = await admin(store, clock, allow_private=True).register(ADMIN, endpoint.url, [], False)
        await profiles(store, clock).create_profile(WRITER, document(1))
        await dispatch_once(dispatcher(store, clock, allow_private=False))
        assert endpoint.received == []
    [delivery] = await deliveries(store, registered.endpoint.id)
    assert (delivery.attempts, delivery.last_error) == (1, "refused_address")


class Answers:
    """A resolver whose answers for a name come from a list, one per lookup (the last repeats):
    a DNS server that moves a name between two lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self._answers = list(answers)
        self.lookups: list[str] = []

    async def addresses(self, host: str) -> list[str]:
        self.lookups.append(host)
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


async def test_the_sender_connects_to_the_addresses_it_checked_not_to_a_second_lookup() -> None:
    # `rebind.test` exists in no DNS: the request can only arrive through the resolver's answer.
    resolver = Answers(["127.0.0.1"])
    sender = HttpWebhookSender(resolver, allow_private=True)
    try:
        async with receiver(204) as endpoint:
            port = endpoint.url.split(":")[2].split("/")[0]
            url = f"http://rebind.test:{port}/hook"
            assert await sender.send(url, {"webhook-id": "msg_1"}, b"{}", DEADLINE_SECONDS) == SendResult(
                204, None
            )
            [request] = endpoint.received
    finally:
        await sender.close()
    assert request.headers["host"] == f"rebind.test:{port}"
    assert request.headers["webhook-id"] == "msg_1"
    assert resolver.lookups == ["rebind.test"]


async def test_an_ipv6_literal_url_is_sent_with_a_bracketed_host() -> None:
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = HttpWebhookSender(SystemResolver(), allow_private=True)
    try:
        result = await sender.send(f"http://[::1]:{port}/hook", {}, b"{}", DEADLINE_SECONDS)
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()
    assert result == SendResult(204, None)
    [head] = heads
    assert f"host: [::1]:{port}\r\n".encode() in head.lower()


async def test_a_name_that_moves_to_an_internal_address_after_the_check_is_refused_at_connect(
    store: Store,
) -> None:
    # DNS rebinding: public at the dispatcher's check, loopback a moment later. The sender
    # resolves once as it connects, checks what it got and connects only there.
    clock = FakeClock()
    async with receiver(200) as endpoint:
        port = endpoint.url.split(":")[2].split("/")[0]
        registered = await admin(store, clock, allow_private=True).register(
            ADMIN, f"http://rebind.test:{port}/hook", [], False
        )
        await profiles(store, clock).create_profile(WRITER, document(1))
        resolver = Answers(["93.184.215.14"], ["127.0.0.1"])
        await dispatch_once(dispatcher(store, clock, allow_private=False, resolver=resolver))
        assert endpoint.received == []
    assert resolver.lookups == ["rebind.test", "rebind.test"]  # the check's, then the connection's
    [delivery] = await deliveries(store, registered.endpoint.id)
    assert (delivery.attempts, delivery.last_error) == (1, "refused_address")


async def test_deleting_an_endpoint_deletes_its_deliveries(store: Store) -> None:
    clock = FakeClock()
    async with receiver(500) as endpoint:
        keel = admin(store, clock)
        registered = await keel.register(ADMIN, endpoint.url, [], False)
        await profiles(store, clock).create_profile(WRITER, document(1))
        await dispatch_once(dispatcher(store, clock))
        assert len(await deliveries(store, registered.endpoint.id)) == 1
        await keel.delete_endpoint(ADMIN, registered.endpoint.id)
        assert await deliveries(store, registered.endpoint.id) == []
        assert await keel.list_endpoints(ADMIN) == []


async def test_the_stored_secret_is_sealed_not_plain(store: Store) -> None:
    registered = await admin(store, FakeClock()).register(ADMIN, "http://127.0.0.1:9/x", [], False)
    async with store.unit_of_work(read_only=True) as uow:
        stored = await uow.webhooks.endpoint(registered.endpoint.id)
    assert stored is not None
    secret = base64.b64decode(registered.secret.removeprefix("whsec_"))
    assert secret not in stored.sealed_secret.encode()
    assert base64.b64encode(secret).decode() not in stored.sealed_secret
    assert BOX.open(stored.sealed_secret) == secret


async def test_a_rotated_key_opens_old_secrets_until_they_are_resealed_with_the_new_one(store: Store) -> None:
    """Rotation: the new key seals, the old one (a fallback) still opens; `reseal_secrets` seals
    every secret again with the new key, after which the new key alone opens them, and the
    secrets themselves (what the receivers verify with) have not changed. A secret no key opens
    is reported, not lost silently."""
    old_key, new_key, lost_key = (box_key(f"{name}-" + "k" * 32) for name in ("old", "new", "lost"))
    before = WebhookAdmin(
        store,
        FakeClock(),
        AesGcmSecretBox(old_key),
        SystemResolver(),
        client_host=client_host,
        allow_private_targets=True,
    )
    kept = [await before.register(ADMIN, f"http://127.0.0.1:9/{n}", [], False) for n in range(2)]
    lost = await WebhookAdmin(
        store,
        FakeClock(),
        AesGcmSecretBox(lost_key),
        SystemResolver(),
        client_host=client_host,
        allow_private_targets=True,
    ).register(ADMIN, "http://127.0.0.1:9/lost", [], False)
    rotated_box = AesGcmSecretBox(new_key, (old_key,))
    rotated = WebhookAdmin(
        store, FakeClock(), rotated_box, SystemResolver(), client_host=client_host, allow_private_targets=True
    )
    new_one = await rotated.register(ADMIN, "http://127.0.0.1:9/new", [], False)

    done = await rotated.reseal_secrets()
    assert sorted(done.resealed) == sorted(r.endpoint.id for r in kept)
    assert done.current == (new_one.endpoint.id,)
    assert done.unreadable == (lost.endpoint.id,)
    new_only = AesGcmSecretBox(new_key)
    async with store.unit_of_work(read_only=True) as uow:
        for registered in [*kept, new_one]:
            stored = await uow.webhooks.endpoint(registered.endpoint.id)
            assert stored is not None
            assert new_only.open(stored.sealed_secret) == base64.b64decode(
                registered.secret.removeprefix("whsec_")
            )
    again = await rotated.reseal_secrets()
    assert (len(again.resealed), len(again.current), again.unreadable) == (0, 3, (lost.endpoint.id,))


async def test_keel_webhooks_reseal_rotates_the_key_of_a_database(database_url: str, store: Store) -> None:
    old, new = "old-" + "o" * 32, "new-" + "n" * 32
    registered = await WebhookAdmin(
        store,
        FakeClock(),
        AesGcmSecretBox(box_key(old)),
        SystemResolver(),
        client_host=client_host,
        allow_private_targets=True,
    ).register(ADMIN, "http://127.0.0.1:9/x", [], False)

    def reseal(key: str, fallbacks: list[str]) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KEEL_DATABASE_URL": database_url,
            "KEEL_WEBHOOK_SECRETS_KEY": key,
            "KEEL_WEBHOOK_SECRETS_KEY_FALLBACKS": json.dumps(fallbacks),
        }
        command = [sys.executable, "-m", "keel", "webhooks", "reseal"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    first = await asyncio.to_thread(reseal, new, [old])
    assert (first.returncode, first.stdout.strip()) == (0, "resealed 1, already current 0, unreadable 0"), (
        first.stderr
    )
    async with store.unit_of_work(read_only=True) as uow:
        stored = await uow.webhooks.endpoint(registered.endpoint.id)
    assert stored is not None
    assert AesGcmSecretBox(box_key(new)).open(stored.sealed_secret) == base64.b64decode(
        registered.secret.removeprefix("whsec_")
    )
    wrong = await asyncio.to_thread(reseal, "other-" + "x" * 32, [])
    assert wrong.returncode == 1
    assert f"unreadable with every configured key: {registered.endpoint.id}" in wrong.stderr
    assert old not in wrong.stdout + wrong.stderr
    assert new not in wrong.stdout + wrong.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_0005_up_and_down_leaves_the_database_as_it_was(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0005")
    await asyncio.to_thread(migrate, url, "0004")
    sqlite = kind == "sqlite"
    at = datetime(2026, 12, 6, 12, tzinfo=UTC)
    await query(
        url,
        "INSERT INTO event_outbox (id, type, source, subject, time, data) VALUES ($1, $2, $3, $4, $5, $6)",
        "e1",
        PROFILE_CREATED,
        "/keel",
        "eu1_x",
        at.isoformat(timespec="microseconds") if sqlite else at,
        "{}",
    )
    before = await everything(url)
    await asyncio.to_thread(migrate, url, "0005")
    assert await revision(url) == "0005"
    upgraded = await everything(url)
    assert set(upgraded["rows"]) - set(before["rows"]) == {"webhook_endpoints", "webhook_deliveries"}
    # Events already in the outbox count as fanned out: no new endpoint receives history.
    [event] = upgraded["rows"]["event_outbox"]
    assert event["fanned_out_at"] is not None
    await asyncio.to_thread(downgrade, url, "0004")
    assert await everything(url) == before


async def test_the_outbox_keeps_published_events_until_webhooks_fanned_them_out(store: Store) -> None:
    clock = FakeClock()
    await profiles(store, clock).create_profile(WRITER, document(1))
    async with store.unit_of_work() as uow:
        [record] = await uow.outbox.read_from(0, 10)
        await uow.outbox.mark_published([(record.seq, None)], clock.now())
        await uow.commit()
    clock.advance(timedelta(days=30))
    async with store.unit_of_work() as uow:
        assert await uow.outbox.prune_published(clock.now()) == 0  # published, not yet fanned out
        await uow.webhooks.mark_fanned_out([record.seq], clock.now())
        assert await uow.outbox.prune_published(clock.now() + timedelta(seconds=1)) == 1
        await uow.commit()


async def test_a_fan_out_holds_the_events_it_read_until_it_commits_on_postgres(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An erasure rewriting a profile's payloads while a fan-out copies them must not leave the
    copy with the old payload: the fan-out's read locks the events, so the erasure's rewrite waits
    for the fan-out's deliveries and then rewrites them too. (SQLite has one writer at a time.)"""
    url = await database("postgres", tmp_path, request, "keel_fan_out_lock")
    await asyncio.to_thread(migrate, url)
    store = await open_store(Settings(database_url=url), observer("test"))
    other = await asyncpg.connect(url)
    lock_it = "SELECT seq FROM event_outbox WHERE seq = $1 FOR UPDATE NOWAIT"
    try:
        await profiles(store, FakeClock()).create_profile(WRITER, document(1))
        async with store.unit_of_work() as uow:
            [record] = await uow.webhooks.events_to_fan_out(10)
            async with other.transaction():
                with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
                    await other.fetch(lock_it, record.seq)
        # The fan-out's transaction is over: the lock went with it (the check can pass).
        async with other.transaction():
            assert [row["seq"] for row in await other.fetch(lock_it, record.seq)] == [record.seq]
    finally:
        await other.close()
        await store.close()


@pytest.mark.parametrize("url", ["http://\u2603.net/hook", "http://xn--n3h.net/hook"])
async def test_a_stored_url_the_http_client_refuses_is_a_recorded_failure_then_a_dead_letter(
    store: Store, url: str
) -> None:
    """Stored before registration refused it: every attempt is recorded as failed, and the
    schedule ends in a dead letter (an attempt raising went unrecorded, and was retried forever)."""
    clock = FakeClock()
    async with store.unit_of_work() as uow:
        endpoint = WebhookEndpoint("whep_" + "1" * 32, url, (), False, clock.now())
        await uow.webhooks.add_endpoint(endpoint, BOX.seal(b"s" * 32))
        await uow.commit()
    await profiles(store, clock).create_profile(WRITER, document(1))
    worker = dispatcher(store, clock, delays=(1,))
    try:
        await worker.run_once()
        await worker.settle()
        [first] = await deliveries(store, endpoint.id)
        assert (first.state, first.attempts, first.last_error) == (DeliveryState.PENDING, 1, "invalid_url")
        clock.advance(timedelta(seconds=2))
        await worker.run_once()
        await worker.settle()
    finally:
        await worker.stop()
        await worker.sender.close()
    [last] = await deliveries(store, endpoint.id)
    assert (last.state, last.attempts, last.last_error) == (DeliveryState.DEAD, 2, "invalid_url")


@pytest.mark.parametrize("url", ["http://\u2603.net/hook", "http://xn--n3h.net/hook"])
async def test_the_sender_answers_a_url_httpx_refuses_with_a_failed_result(url: str) -> None:
    sender = HttpWebhookSender(SystemResolver(), allow_private=True)
    try:
        assert client_host(url) is None
        assert await sender.send(url, {}, b"{}", DEADLINE_SECONDS) == SendResult(None, "invalid_url")
    finally:
        await sender.close()
