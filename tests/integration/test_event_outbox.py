"""Events, end to end over real databases (SQLite and PostgreSQL) and a real NATS JetStream:
an event exists if and only if its change was committed; the relay publishes every event once,
in order per profile, also when NATS was down, when a relay dies between publishing and marking,
and when another process's relay takes over; `keel events tail` reads the outbox without NATS."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from testkit.servers.nats import NatsServer, nats_server
from typer.testing import CliRunner

from keel.bootstrap.lifecycle import running
from keel.cli import app
from keel.config import Settings
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import Conflict, VersionMismatch
from keel.domain.events import DomainEvent, profile_changed
from keel.domain.profile import Email, Profile, ProfileFields
from keel.events.jetstream import JetStreamPublisher, StreamSpec
from keel.observability.metrics import Metrics
from keel.service.attributes import AttributePolicy
from keel.service.auth import issue_api_key, revoke_api_key
from keel.service.outbox import OutboxRelay, RelayObserver, RelayPolicy
from keel.service.ports import OutboxRecord, Store
from keel.service.profiles import ProfileService
from keel.storage.migrations.runner import downgrade, migrate
from tests.fakes import FakeClock
from tests.integration.test_migrations_up_and_down import database, everything, query, revision

WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
STREAM = "KEEL_EVENTS"
PREFIX = "keel.events"
# Bounds only a hang: every wait below ends as soon as its condition holds.
DEADLINE_SECONDS = 30.0
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def nats_bus() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


def document(n: int) -> dict[str, Any]:
    return {"handle": f"user_{n}", "emails": [{"address": f"user{n}@example.com", "primary": True}]}


def profiles(store: Store, clock: FakeClock, relay: OutboxRelay | None = None) -> ProfileService:
    return ProfileService(
        store, clock, AttributePolicy(), "eu1", on_events_committed=relay.wake if relay else None
    )


def publisher(server: NatsServer) -> JetStreamPublisher:
    return JetStreamPublisher(server.url, StreamSpec(STREAM, PREFIX, 120.0), timeout_seconds=1.0)


def watched_relay(store: Store, server: NatsServer, clock: FakeClock, failures: list[str]) -> OutboxRelay:
    """A relay whose failed passes are appended to `failures` (by stage)."""
    return OutboxRelay(store, publisher(server), clock, RelayPolicy(), RelayObserver(failed=failures.append))


async def outbox(store: Store) -> list[OutboxRecord]:
    async with store.unit_of_work(read_only=True) as uow:
        return await uow.outbox.read_from(0, 100_000)


async def depth(store: Store) -> int:
    async with store.unit_of_work(read_only=True) as uow:
        return await uow.outbox.depth()


async def drain(relay: OutboxRelay, store: Store) -> None:
    """Relay passes until the outbox is empty of unpublished events."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while await depth(store) > 0:
        assert time.monotonic() < deadline, "the relay did not drain the outbox"
        await relay.run_once()


async def consume(server: NatsServer, expected: int) -> list[dict[str, Any]]:
    """What a consumer following docs/events.md applies: a durable pull consumer, each message
    acknowledged after its effect, duplicates (by event id) skipped. Reads until `expected`
    messages arrived, then checks nothing more is there."""
    client = await nats.connect(server.url)
    try:
        js = client.jetstream()
        subscription = await js.pull_subscribe(
            f"{PREFIX}.>", durable="test-consumer", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        )
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(received) < expected:
            assert time.monotonic() < deadline, f"only {len(received)} of {expected} events arrived"
            try:
                batch = await subscription.fetch(100, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for message in batch:
                received.append(json.loads(message.data))
                await message.ack()
        info = await js.consumer_info(STREAM, "test-consumer")
        assert info.num_pending == 0, "more messages than events"
        return received
    finally:
        await client.close()


def assert_in_order_per_profile(events: list[dict[str, Any]]) -> None:
    versions: dict[str, list[int]] = {}
    for event in events:
        if event["type"].startswith("keel.profile."):
            versions.setdefault(event["subject"], []).append(event["data"]["version"])
    for subject, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), (subject, seen)


async def some_changes(service: ProfileService, profiles_count: int, updates: int) -> int:
    """Creates, then interleaved updates across the profiles; returns how many events that is."""
    ids = [(await service.create_profile(WRITER, document(n))).profile.id for n in range(profiles_count)]
    for round_ in range(updates):
        for profile_id in ids:
            await service.update_profile(WRITER, profile_id, {"display_name": f"round {round_}"})
    return profiles_count * (1 + updates)


async def test_a_committed_change_always_has_its_event_and_a_failed_one_none(store: Store) -> None:
    clock = FakeClock()
    service = profiles(store, clock)
    created = (await service.create_profile(WRITER, document(1))).profile
    await service.update_profile(WRITER, created.id, {"display_name": "Ada"})
    # Refused writes: a taken handle, a stale expected version. Neither leaves an event.
    with pytest.raises(Conflict):
        await service.create_profile(WRITER, document(1))
    with pytest.raises(VersionMismatch):
        await service.update_profile(WRITER, created.id, {"bio": "x"}, expected_version=1)
    # A unit of work that wrote a change and its event, then rolled back: neither is stored.
    fields = ProfileFields(handle="ghost", emails=(Email("ghost@example.com", primary=True),))
    ghost = Profile.create("eu1_ghost", fields, clock.now())
    with pytest.raises(RuntimeError, match="after the writes"):
        async with store.unit_of_work() as uow:
            await uow.profiles.add(ghost)
            await uow.outbox.add(profile_changed(ghost), "/keel")
            raise RuntimeError("after the writes, before the commit")
    await service.delete_profile(WRITER, created.id)

    events = [record.event for record in await outbox(store)]
    assert [(e.type, e.subject, e.data["version"]) for e in events] == [
        ("keel.profile.created.v1", created.id, 1),
        ("keel.profile.updated.v1", created.id, 2),
        ("keel.profile.deleted.v1", created.id, 3),
    ]
    assert events[1].data["display_name"] == "Ada"
    assert len({e.id for e in events}) == 3
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.profiles.get("eu1_ghost") is None


async def test_api_key_changes_have_events(store: Store) -> None:
    clock = FakeClock()
    issued = await issue_api_key(store, clock, scopes=[Scope.ADMIN], api_version="2026-11-28", name="ops")
    assert await revoke_api_key(store, clock, issued.key.id)
    assert not await revoke_api_key(store, clock, issued.key.id)  # nothing changed: no event
    events: list[DomainEvent] = [record.event for record in await outbox(store)]
    assert [(e.type, e.subject) for e in events] == [
        ("keel.api_key.created.v1", issued.key.id),
        ("keel.api_key.revoked.v1", issued.key.id),
    ]
    assert "secret" not in json.dumps(events[0].data)
    assert issued.token not in json.dumps(events[0].data)


async def test_the_relay_publishes_every_event_once_in_order_per_profile(
    database_url: str, store: Store, nats_bus: NatsServer
) -> None:
    clock = FakeClock()
    relay = OutboxRelay(store, publisher(nats_bus), clock, RelayPolicy(batch_size=7))
    try:
        service = profiles(store, clock, relay)
        expected = await some_changes(service, profiles_count=5, updates=4)
        await drain(relay, store)
        received = await consume(nats_bus, expected)
    finally:
        await relay.publisher.close()
    assert len(received) == expected
    assert len({event["id"] for event in received}) == expected
    assert_in_order_per_profile(received)
    stored = await outbox(store)
    assert [event["id"] for event in received] == [record.event.id for record in stored]
    assert all(record.published_at is not None for record in stored)

    # `keel events tail` with NATS configured reads the stream, from a stream sequence on.
    tail = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "keel", "events", "tail", "--from", "3"],
        env={**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_NATS_URL": nats_bus.url},
        capture_output=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert tail.returncode == 0, tail.stderr.decode()
    lines = [json.loads(line) for line in tail.stdout.decode().splitlines()]
    assert [line["seq"] for line in lines] == list(range(3, expected + 1))
    assert [line["event"]["id"] for line in lines] == [event["id"] for event in received[2:]]


async def test_writes_succeed_while_nats_is_down_and_the_backlog_drains_after(
    store: Store, nats_bus: NatsServer
) -> None:
    clock = FakeClock()
    failures: list[str] = []
    relay = watched_relay(store, nats_bus, clock, failures)
    try:
        service = profiles(store, clock, relay)
        await service.create_profile(WRITER, document(100))
        await drain(relay, store)  # connected, stream made
        nats_bus.stop()
        expected_backlog = await some_changes(service, profiles_count=3, updates=2)
        assert await depth(store) == expected_backlog
        assert not await relay.run_once()
        assert failures == ["publish"]
        assert await depth(store) == expected_backlog  # nothing lost, nothing marked
        nats_bus.start()
        await drain(relay, store)
        received = await consume(nats_bus, 1 + expected_backlog)
    finally:
        await relay.publisher.close()
    assert len({event["id"] for event in received}) == 1 + expected_backlog
    assert_in_order_per_profile(received)


async def test_a_stream_deleted_under_a_running_relay_is_created_again_and_nothing_is_lost(
    store: Store, nats_bus: NatsServer
) -> None:
    clock = FakeClock()
    failures: list[str] = []
    relay = watched_relay(store, nats_bus, clock, failures)
    try:
        service = profiles(store, clock, relay)
        await service.create_profile(WRITER, document(200))
        await drain(relay, store)  # connected, stream made, one event in it
        client = await nats.connect(nats_bus.url)
        try:
            assert await client.jetstream().delete_stream(STREAM)
        finally:
            await client.close()
        expected = await some_changes(service, profiles_count=2, updates=2)
        await drain(relay, store)  # at most one failed pass, then the stream exists again
        received = await consume(nats_bus, expected)
    finally:
        await relay.publisher.close()
    assert failures in ([], ["publish"])
    assert len({event["id"] for event in received}) == expected
    assert_in_order_per_profile(received)


async def test_a_relay_killed_between_publish_and_mark_loses_nothing_and_shows_no_duplicate(
    database_url: str, store: Store, nats_bus: NatsServer
) -> None:
    clock = FakeClock(datetime.now(UTC))
    service = profiles(store, clock)
    expected = await some_changes(service, profiles_count=4, updates=2)
    dead = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "tests.integration.outbox_relay_process",
            database_url,
            nats_bus.url,
            STREAM,
            "5",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert dead.returncode == -9, dead.stderr.decode()
    # It published five events and marked none.
    assert await depth(store) == expected

    survivor = OutboxRelay(store, publisher(nats_bus), clock, RelayPolicy(lease_seconds=5.0))
    try:
        # The dead relay's lease has not run out: nobody else publishes...
        assert not await survivor.run_once()
        assert not survivor.leading
        # ...until it has, and then the survivor takes over and republishes from the first
        # unmarked event, the five already published among them.
        clock.advance(timedelta(seconds=60))
        await drain(survivor, store)
        assert survivor.leading
        received = await consume(nats_bus, expected)
    finally:
        await survivor.publisher.close()
    ids = [event["id"] for event in received]
    assert len(ids) == len(set(ids)) == expected
    assert ids == [record.event.id for record in await outbox(store)]
    assert_in_order_per_profile(received)


async def test_one_relay_publishes_at_a_time_and_another_takes_over_when_its_lease_runs_out(
    store: Store, nats_bus: NatsServer
) -> None:
    clock = FakeClock()
    policy = RelayPolicy(lease_seconds=5.0)
    first = OutboxRelay(store, publisher(nats_bus), clock, policy, holder="first")
    second = OutboxRelay(store, publisher(nats_bus), clock, policy, holder="second")
    try:
        service = profiles(store, clock)
        await service.create_profile(WRITER, document(1))
        await first.run_once()
        assert first.leading
        await service.create_profile(WRITER, document(2))
        await second.run_once()
        assert not second.leading
        assert await depth(store) == 1  # the second published nothing
        clock.advance(timedelta(seconds=4))
        await second.run_once()
        assert not second.leading  # not yet expired
        clock.advance(timedelta(seconds=2))  # `first` stopped renewing: its lease ran out
        await second.run_once()
        assert second.leading
        assert await depth(store) == 0
        await first.run_once()
        assert not first.leading
        received = await consume(nats_bus, 2)
    finally:
        await first.publisher.close()
        await second.publisher.close()
    assert [event["data"]["handle"] for event in received] == ["user_1", "user_2"]


async def test_published_events_are_pruned_after_the_retention_period(
    store: Store, nats_bus: NatsServer
) -> None:
    clock = FakeClock()
    policy = RelayPolicy(retention=timedelta(hours=1), prune_every=timedelta(0))
    relay = OutboxRelay(store, publisher(nats_bus), clock, policy)
    try:
        service = profiles(store, clock)
        await service.create_profile(WRITER, document(1))
        await drain(relay, store)
        clock.advance(timedelta(minutes=30))
        await service.create_profile(WRITER, document(2))
        await relay.run_once()
        assert len(await outbox(store)) == 2  # both published, neither old enough
        # As the webhook dispatcher does: only events it has fanned out may be pruned.
        async with store.unit_of_work() as uow:
            await uow.webhooks.mark_fanned_out([record.seq for record in await outbox(store)], clock.now())
            await uow.commit()
        clock.advance(timedelta(minutes=45))
        await service.create_profile(WRITER, document(3))
        nats_bus.stop()
        # The publish fails, and fails again at once (a hang here was a relay reconnecting for
        # ever); pruning of what is published is not held up.
        async with asyncio.timeout(DEADLINE_SECONDS):
            await relay.run_once()
            await relay.run_once()
    finally:
        await relay.publisher.close()
    kept = await outbox(store)
    assert [record.event.data["handle"] for record in kept] == ["user_2", "user_3"]
    assert kept[1].published_at is None  # never pruned before it is published


def test_events_tail_prints_the_outbox_on_sqlite_without_nats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    migrate(url)
    env = {"KEEL_DATABASE_URL": url}
    runner = CliRunner()
    seeded = runner.invoke(app, ["seed", "--count", "3"], env=env)
    assert seeded.exit_code == 0, seeded.output
    tail = runner.invoke(app, ["events", "tail"], env=env)
    assert tail.exit_code == 0, tail.output
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert {line["event"]["type"] for line in lines} == {"keel.profile.created.v1"}
    assert all(line["event"]["specversion"] == "1.0" for line in lines)
    later = runner.invoke(app, ["events", "tail", "--from", "3"], env=env)
    assert [json.loads(line)["seq"] for line in later.stdout.splitlines()] == [3]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_0004_up_and_down_leaves_the_database_as_it_was(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0004")
    await asyncio.to_thread(migrate, url, "0003")
    await query(
        url,
        "INSERT INTO api_keys (id, secret_hash, scopes, api_version, name, created_at, plan)"
        " VALUES ('aaaaaaaaaaaaaaaa', 'v', 'admin', '2026-11-28', 'kept', $1, 'standard')",
        "2026-11-28T12:00:00+00:00" if kind == "sqlite" else datetime(2026, 11, 28, 12, tzinfo=UTC),
    )
    before = await everything(url)
    await asyncio.to_thread(migrate, url, "0004")
    assert await revision(url) == "0004"
    tables = await everything(url)
    assert set(tables["rows"]) - set(before["rows"]) - {"sqlite_sequence"} == {
        "event_outbox",
        "event_relay_lease",
    }
    await asyncio.to_thread(downgrade, url, "0003")
    after = await everything(url)
    # SQLite keeps the (now empty) sqlite_sequence table that AUTOINCREMENT created: it belongs
    # to SQLite and cannot be dropped. Everything else is as it was.
    assert after["rows"].pop("sqlite_sequence", []) == []
    after["schema"] = [row for row in after["schema"] if row.get("name") != "sqlite_sequence"]
    assert after == before


async def test_a_core_started_with_a_nats_url_relays_its_writes(database_url: str, store: Store) -> None:
    with nats_server() as server:
        settings = Settings(database_url=database_url, nats_url=server.url, outbox_relay_poll_seconds=0.5)
        metrics = Metrics()
        async with running(settings, metrics) as keel:
            created = await keel.profiles.create_profile(WRITER, document(1))
            # Woken by the commit, the relay publishes it and marks it published.
            deadline = time.monotonic() + DEADLINE_SECONDS
            while await depth(store) > 0:
                assert time.monotonic() < deadline, "the relay did not publish"
                await asyncio.sleep(0.01)
            received = await consume(server, 1)
            assert keel.local.relay is not None
            assert keel.local.relay.leading
        assert [event["subject"] for event in received] == [created.profile.id]
        assert metrics.registry.get_sample_value("keel_outbox_published_total") == 1
        assert metrics.registry.get_sample_value("keel_outbox_relay_lag_seconds_count") == 1
        # Stopped, the relay gave its lease back: another process may take over at once.
        async with store.unit_of_work() as uow:
            assert await uow.outbox.claim_relay_lease("next", datetime.now(UTC), datetime.now(UTC))


async def stream_config(server: NatsServer) -> StreamConfig:
    client = await nats.connect(server.url)
    try:
        info = await client.jetstream().stream_info(STREAM)
    finally:
        await client.close()
    assert info.config is not None
    return info.config


async def test_a_new_stream_keeps_events_for_the_set_age_and_an_existing_streams_limits_stay() -> None:
    """The stream Keel creates drops events after `max_age` (personal data in events does not
    stay in NATS for ever); a stream that exists, with limits an operator chose, is left as is."""
    spec = StreamSpec(STREAM, PREFIX, 120.0, max_age_seconds=3600.0)
    with nats_server() as server:
        first = JetStreamPublisher(server.url, spec, timeout_seconds=DEADLINE_SECONDS)
        try:
            await first.publish(f"{PREFIX}.profile.created", "m1", b"{}")
        finally:
            await first.close()
        created = await stream_config(server)
        assert created.max_age == 3600.0
        assert created.duplicate_window == 120.0
        client = await nats.connect(server.url)
        try:
            await client.jetstream().update_stream(replace(created, max_age=86400.0, max_msgs=1000))
        finally:
            await client.close()
        second = JetStreamPublisher(server.url, spec, timeout_seconds=DEADLINE_SECONDS)
        try:
            await second.publish(f"{PREFIX}.profile.created", "m2", b"{}")
        finally:
            await second.close()
        kept = await stream_config(server)
        assert (kept.max_age, kept.max_msgs) == (86400.0, 1000)
