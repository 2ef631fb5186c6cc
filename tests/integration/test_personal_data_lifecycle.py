"""The personal-data lifecycle on SQLite and PostgreSQL: export, the erasure saga (each step,
interrupted after each step, retried, given up, waiting on acknowledgements) and the purge of
soft-deleted profiles. "No personal value left" is checked by reading every row of every table
the database has (from its catalog), so a table added later is scanned too."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from jsonschema import Draft202012Validator
from testkit.servers.nats import nats_server
from testkit.servers.redis import redis_server

from keel.bootstrap.personal_data import build_personal_data
from keel.cache.memory import BoundedProfileCache
from keel.cache.redis_bus import RedisInvalidationBus
from keel.config import Settings
from keel.domain.api_keys import Principal, Scope
from keel.domain.erasure import Erasure, ErasureState, ErasureStep
from keel.domain.errors import Forbidden, NotFound
from keel.domain.events import PROFILE_CREATED, PROFILE_ERASED, profile_changed
from keel.domain.profile import JSONObject
from keel.domain.webhooks import DeliveryState, WebhookEndpoint
from keel.events.jetstream import read_stream
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy
from keel.service.attributes import AttributePolicy
from keel.service.erasure import ErasureObserver, ErasurePolicy, ErasureSagaRunner, ErasureStatus
from keel.service.outbox import OutboxRelay, RelayPolicy, cloud_event
from keel.service.personal_data import PersonalDataService
from keel.service.ports import EventPublisher, OutboxRecord, PersonalDataStore, Store
from keel.service.profile_reads import ProfileReads
from keel.service.profiles import ProfileService
from keel.storage.migrations.runner import downgrade, migrate
from keel.storage.postgres.store import PostgresStore
from keel.storage.sqlite.store import SqliteStore
from tests.fakes import FakeClock
from tests.integration.test_event_outbox import STREAM, drain
from tests.integration.test_event_outbox import publisher as stream_publisher
from tests.integration.test_migrations_up_and_down import database, everything, query, revision
from tests.integration.test_webhooks import (
    BOX,
    DEADLINE_SECONDS,
    admin,
    deliveries,
    dispatch_once,
    dispatcher,
)
from tests.integration.webhook_receivers import down_url, receiver

ADMIN = Principal("admin_key", frozenset({Scope.ADMIN}), "2026-11-28")
WRITER = Principal("writer_key", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
REPOSITORY = Path(__file__).resolve().parents[2]
CONTRACTS = REPOSITORY / "contracts" / "events"
# Bounds only a hang of the killed subprocess: it ends as soon as it kills itself.
PROCESS_DEADLINE_SECONDS = 60.0

# The erased profile's personal values: each distinctive enough that finding it anywhere can
# only mean a copy of it.
ERASED: JSONObject = {
    "handle": "zq_erasable",
    "emails": [{"address": "Zq.Erasable@example.org", "primary": True}, {"address": "zq2@example.net"}],
    "display_name": "Zebulon Quuxworth",
    "bio": "bio-zq-secret",
    "avatar_url": "https://img.example.org/zq-avatar.png",
    "links": [{"kind": "website", "url": "https://zq-home.example.org/"}],
    "attributes": {"nickname": "zq-nick-value"},
}
ERASED_VALUES = (
    "zq_erasable",
    "Zq.Erasable@example.org",
    "zq.erasable@example.org",
    "zq2@example.net",
    "Zebulon Quuxworth",
    "Zebulon",
    "bio-zq-secret",
    "zq-avatar.png",
    "zq-home.example.org",
    "zq-nick-value",
    "Zebulon Q.",  # the display name of the update
)
# Another profile, kept: the scan must find its values (the scan can see what it looks for).
KEPT: JSONObject = {
    "handle": "kept_one",
    "emails": [{"address": "kept@example.com", "primary": True}],
    "bio": "kept-bio-value",
}


class Crash(BaseException):
    """Stands for the process dying: not an `Exception`, so nothing in the saga catches it."""


@dataclass
class World:
    url: str
    store: PersonalDataStore
    sql: Store  # the same store, as the webhooks use it
    clock: FakeClock
    profiles: ProfileService
    personal_data: PersonalDataService
    dropped: list[tuple[str, int]] = field(default_factory=list)
    policy: ErasurePolicy = field(default_factory=ErasurePolicy)

    def runner(
        self,
        *,
        observer: ErasureObserver | None = None,
        drop_cached: Callable[[str, int], Awaitable[None]] | None = None,
        stream: EventPublisher | None = None,
    ) -> ErasureSagaRunner:
        async def record_drop(profile_id: str, version: int) -> None:
            self.dropped.append((profile_id, version))

        return ErasureSagaRunner(
            self.store,
            self.clock,
            drop_cached or record_drop,
            stream=stream,
            policy=self.policy,
            observer=observer or ErasureObserver(),
        )


def with_lifecycle_tables(store: Store) -> PersonalDataStore:
    assert isinstance(store, SqliteStore | PostgresStore)
    return store


@pytest.fixture(params=["normalized", "document"])
def storage_layout(request: pytest.FixtureRequest) -> str:
    """Both layouts, whatever KEEL_STORAGE_LAYOUT says: erasure and the purge must reach the
    rows of either (docs/layouts.md)."""
    layout: str = request.param
    return layout


@pytest.fixture
def world(database_url: str, store: Store) -> World:
    clock = FakeClock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    policy = ErasurePolicy()
    lifecycle = with_lifecycle_tables(store)
    return World(
        url=database_url,
        store=lifecycle,
        sql=store,
        clock=clock,
        profiles=ProfileService(store, clock, AttributePolicy(), "eu1"),
        personal_data=PersonalDataService(lifecycle, clock, "eu1", erasure_policy=policy),
        policy=policy,
    )


async def a_profile_with_history(world: World) -> str:
    """The erased profile, created with an idempotency key (its outcome is stored) and updated
    (two events), beside a profile that stays."""
    created = await world.profiles.create_profile(WRITER, ERASED, idempotency_key="create-zq-1")
    await world.profiles.update_profile(WRITER, created.profile.id, {"display_name": "Zebulon Q."})
    await world.profiles.create_profile(WRITER, KEPT, idempotency_key="create-kept-1")
    return created.profile.id


def plain(document: JSONObject | ErasureStatus) -> Any:
    """A document as a test reads it: plain JSON, any shape."""
    data = document.document() if isinstance(document, ErasureStatus) else document
    return json.loads(json.dumps(data))


# Where a profile's own values are stored, per layout.
PROFILE_TABLES = {
    "normalized": {"profiles", "profile_emails", "profile_links"},
    "document": {"profile_documents", "profile_document_emails"},
}


async def values_found(url: str, values: tuple[str, ...]) -> dict[str, list[str]]:
    """Which of `values` appear, case-insensitively, in any column of any row of any table."""
    rows = (await everything(url))["rows"]
    found: dict[str, list[str]] = {}
    for table, table_rows in rows.items():
        text = json.dumps(table_rows, default=str).lower()
        hits = [value for value in values if value.lower() in text]
        if hits:
            found[table] = hits
    return found


async def events_of(store: PersonalDataStore, subject: str) -> list[OutboxRecord]:
    async with store.unit_of_work(read_only=True) as uow:
        return await uow.personal_data.events_of(subject)


async def erasure_state(store: PersonalDataStore, profile_id: str) -> Erasure:
    async with store.unit_of_work(read_only=True) as uow:
        erasure = await uow.erasures.of_profile(profile_id)
    assert erasure is not None
    return erasure


async def test_after_erasure_no_table_holds_a_personal_value_of_the_profile(
    world: World, storage_layout: str
) -> None:
    async with receiver(200) as endpoint:
        # A webhook endpoint receiving every event: its deliveries keep a copy of each.
        registered = await admin(world.sql, world.clock).register(ADMIN, endpoint.url, [], False)
        profile_id = await a_profile_with_history(world)
        await dispatch_once(dispatcher(world.sql, world.clock))
    sent = await deliveries(world.sql, registered.endpoint.id)
    assert [d.subject for d in sent].count(profile_id) == 2
    before = await values_found(world.url, ERASED_VALUES)
    # The scan sees the values where they are: rows, children (in the layout the test runs on,
    # docs/layouts.md), outbox payloads, idempotency, webhook deliveries.
    profile_tables = PROFILE_TABLES[storage_layout]
    assert {*profile_tables, "event_outbox", "idempotency_keys", "webhook_deliveries"} <= set(before)

    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    assert status.erasure.state is ErasureState.RUNNING
    assert await world.runner().run_due() == 1

    assert await values_found(world.url, ERASED_VALUES) == {}
    kept = set(await values_found(world.url, ("kept_one", "kept@example.com", "kept-bio-value")))
    # (no link of the kept profile holds one of these values)
    assert kept >= {*profile_tables, "event_outbox", "idempotency_keys", "webhook_deliveries"} - {
        "profile_links"
    }
    done = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    assert done["state"] == "completed"
    assert [step["done"] for step in done["steps"]] == [True] * len(ErasureStep)
    assert world.dropped == [(profile_id, 3)]  # every cached copy below the erased version
    events = await events_of(world.store, profile_id)
    assert [r.event.type for r in events] == [
        "keel.profile.created.v1",
        "keel.profile.updated.v1",
        PROFILE_ERASED,
    ]
    assert events[-1].event.data == {
        "id": profile_id,
        "version": 3,
        "erased_at": events[-1].event.data["erased_at"],
        "erasure_id": status.erasure.id,
    }
    # The erased forms still validate against their types' committed schemas.
    for record in events:
        event = cloud_event(record)
        schema = json.loads((CONTRACTS / f"{event['type']}.json").read_text(encoding="utf-8"))
        assert list(Draft202012Validator(schema).iter_errors(event["data"])) == []
    # Gone for every reader, and a retry of the request that created it learns nothing of it.
    with pytest.raises(NotFound):
        await world.profiles.read_profile(WRITER, profile_id)
    with pytest.raises(NotFound, match="erased"):
        await world.profiles.create_profile(WRITER, ERASED, idempotency_key="create-zq-1")
    # Its handle and emails are free again.
    again = await world.profiles.create_profile(WRITER, {"handle": "zq_erasable", "emails": ERASED["emails"]})
    assert again.profile.id != profile_id


async def test_the_export_holds_everything_keel_keeps_about_the_profile(world: World) -> None:
    profile_id = await a_profile_with_history(world)
    export = plain(await world.personal_data.export_profile(ADMIN, profile_id))
    assert export["profile_id"] == profile_id
    profile = export["profile"]
    assert isinstance(profile, dict)
    assert profile["handle"] == "zq_erasable"
    assert profile["display_name"] == "Zebulon Q."
    assert profile["bio"] == "bio-zq-secret"
    assert profile["avatar_url"] == "https://img.example.org/zq-avatar.png"
    assert profile["emails"] == [
        {"address": "Zq.Erasable@example.org", "verified": False, "primary": True},
        {"address": "zq2@example.net", "verified": False, "primary": False},
    ]
    assert profile["links"] == [{"kind": "website", "url": "https://zq-home.example.org/"}]
    assert profile["attributes"] == {"nickname": "zq-nick-value"}
    assert profile["version"] == 2
    assert profile["deleted_at"] is None
    events = export["events"]
    assert isinstance(events, list)
    assert [e["type"] for e in events] == ["keel.profile.created.v1", "keel.profile.updated.v1"]
    assert [e["data"]["version"] for e in events] == [1, 2]
    assert all(e["subject"] == profile_id and e["published_at"] is None for e in events)
    # The idempotency record that holds the profile: its metadata, never the stored response.
    assert export["idempotency_records"] == [
        {
            "scope": "writer_key:create_profile",
            "key": "create-zq-1",
            "state": "completed",
            "expires_at": export["idempotency_records"][0]["expires_at"],
        }
    ]
    assert export["tombstone"] is None
    assert export["erasure"] is None
    assert "kept_one" not in json.dumps(export)

    # Soft-deleted: still held, still exported.
    await world.profiles.delete_profile(WRITER, profile_id)
    deleted = plain(await world.personal_data.export_profile(ADMIN, profile_id))
    assert deleted["profile"]["deleted_at"] is not None
    assert len(deleted["events"]) == 3

    # Erased: what is left is the tombstone, the erasure and the erased forms of the events.
    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    await world.runner().run_due()
    erased = plain(await world.personal_data.export_profile(ADMIN, profile_id))
    assert erased["profile"] is None
    assert erased["tombstone"]["cause"] == "erasure"
    assert erased["erasure"]["id"] == status.erasure.id
    assert erased["erasure"]["state"] == "completed"
    assert [e["type"] for e in erased["events"]][-1] == PROFILE_ERASED
    text = json.dumps(erased).lower()
    assert [value for value in ERASED_VALUES if value.lower() in text] == []


@pytest.mark.parametrize("crash_after", list(ErasureStep))
async def test_a_saga_interrupted_after_any_step_completes_after_a_restart(
    world: World, crash_after: ErasureStep
) -> None:
    profile_id = await a_profile_with_history(world)
    status = await world.personal_data.start_erasure(ADMIN, profile_id)

    def die_after(erasure: Erasure, step: ErasureStep) -> None:
        if step is crash_after:
            raise Crash(step.value)

    with pytest.raises(Crash):
        await world.runner(observer=ErasureObserver(step_done=die_after)).run_due()
    progress = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    steps = list(ErasureStep)
    done = steps[: steps.index(crash_after) + 1]
    assert [step["name"] for step in progress["steps"] if step["done"]] == [s.value for s in done]
    expected_state = "completed" if crash_after is ErasureStep.FINISH else "running"
    assert progress["state"] == expected_state

    # The dead runner's lease holds the saga until it runs out; then a new runner takes it up.
    restarted = world.runner()
    assert await restarted.run_due() == 0
    world.clock.advance(world.policy.lease)
    await restarted.run_due()

    finished = await erasure_state(world.store, profile_id)
    assert finished.state is ErasureState.COMPLETED
    assert await values_found(world.url, ERASED_VALUES) == {}
    erased_events = [r for r in await events_of(world.store, profile_id) if r.event.type == PROFILE_ERASED]
    assert len(erased_events) == 1  # a step done is never done again


@pytest.mark.parametrize("kill_after", [ErasureStep.REMOVE_PERSONAL_DATA, ErasureStep.PUBLISH_ERASED_EVENT])
async def test_a_runner_killed_mid_saga_is_taken_over_and_the_saga_completes(
    world: World, kill_after: ErasureStep, storage_layout: str
) -> None:
    profile_id = await a_profile_with_history(world)
    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.erasure_saga_process",
        world.url,
        kill_after.value,
        world.clock.now().isoformat(),
        cwd=REPOSITORY,
        env={**os.environ, "KEEL_STORAGE_LAYOUT": storage_layout},  # the layout its database records
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), PROCESS_DEADLINE_SECONDS)
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    killed = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    assert killed["state"] == "running"
    assert killed["next_step"] == list(ErasureStep)[list(ErasureStep).index(kill_after) + 1].value

    world.clock.advance(world.policy.lease + timedelta(seconds=1))
    assert await world.runner().run_due() == 1
    assert (await erasure_state(world.store, profile_id)).state is ErasureState.COMPLETED
    assert await values_found(world.url, ERASED_VALUES) == {}
    types = [r.event.type for r in await events_of(world.store, profile_id)]
    assert types.count(PROFILE_ERASED) == 1


async def test_an_erasure_finishes_only_after_each_personal_data_endpoint_acknowledged_it(
    world: World,
) -> None:
    async with receiver(hanging=True) as crm, receiver(200) as analytics:
        keel = admin(world.sql, world.clock)
        holder = await keel.register(ADMIN, crm.url, [PROFILE_ERASED], True)
        await keel.register(ADMIN, analytics.url, [], False)  # holds no personal data: not awaited
        profile_id = await a_profile_with_history(world)
        status = await world.personal_data.start_erasure(ADMIN, profile_id)
        runner = world.runner()
        worker = dispatcher(world.sql, world.clock, timeout=DEADLINE_SECONDS)
        try:
            await runner.run_due()
            waiting = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
            assert waiting["next_step"] == "await_acknowledgements"
            assert waiting["pending_holders"] == [holder.endpoint.id]

            # The erased event reaches the endpoint, which does not answer yet: still pending.
            await worker.run_once()
            [request] = await crm.wait_for(1)
            sent = json.loads(request.body)
            assert (sent["type"], sent["subject"]) == (PROFILE_ERASED, profile_id)
            world.clock.advance(world.policy.acknowledgement_poll)
            await runner.run_due()
            erasure = await erasure_state(world.store, profile_id)
            assert erasure.state is ErasureState.RUNNING
            assert erasure.acknowledged_at is None
            assert erasure.last_error == f"no acknowledgement yet from {holder.endpoint.id}"

            # It answers 2xx: that is the acknowledgement; at its next check the saga finishes.
            crm.release(204)
            await worker.settle()
            assert await runner.run_due() == 0  # not due before its next check
            world.clock.advance(world.policy.acknowledgement_poll)
            await runner.run_due()
        finally:
            await worker.stop()
            await worker.sender.close()
    done = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    assert done["state"] == "completed"
    assert done["pending_holders"] == []
    assert (await erasure_state(world.store, profile_id)).acknowledged_at is not None


async def test_the_export_names_every_endpoint_the_profiles_events_went_to_dead_letters_included(
    world: World,
) -> None:
    async with receiver(200) as crm:
        crm_url = crm.url
        keel = admin(world.sql, world.clock)
        delivered_to = await keel.register(ADMIN, crm_url, [], False)
        dead_url = down_url()
        dead_at = await keel.register(ADMIN, dead_url, [PROFILE_CREATED], False)
        profile_id = await a_profile_with_history(world)
        worker = dispatcher(world.sql, world.clock, delays=())  # one attempt, then a dead letter
        try:
            for _ in range(10):  # passes until nothing is pending (a few: one per endpoint at a time)
                await worker.run_once()
                await worker.settle()
                states = [
                    d.state
                    for e in (delivered_to, dead_at)
                    for d in await deliveries(world.sql, e.endpoint.id)
                ]
                if DeliveryState.PENDING not in states:
                    break
        finally:
            await worker.stop()
            await worker.sender.close()
    export = plain(await world.personal_data.export_profile(ADMIN, profile_id))
    seen = sorted((d["endpoint_url"], d["event_type"], d["state"]) for d in export["webhook_deliveries"])
    assert seen == sorted(
        [
            (crm_url, PROFILE_CREATED, "delivered"),
            (crm_url, "keel.profile.updated.v1", "delivered"),
            (dead_url, PROFILE_CREATED, "dead"),
        ]
    )
    by_endpoint = {d["endpoint_id"] for d in export["webhook_deliveries"]}
    assert by_endpoint == {delivered_to.endpoint.id, dead_at.endpoint.id}
    event_ids = {e["id"] for e in export["events"]}
    assert {d["event_id"] for d in export["webhook_deliveries"]} <= event_ids
    assert all(d["attempts"] == 1 and d["finished_at"] is not None for d in export["webhook_deliveries"])


async def test_the_saga_reports_a_dead_lettered_holder_pending_until_given_up(world: World) -> None:
    async with receiver(200) as crm:
        keel = admin(world.sql, world.clock)
        acknowledging = await keel.register(ADMIN, crm.url, [PROFILE_ERASED], True)
        silent = await keel.register(ADMIN, down_url(), [PROFILE_ERASED], True)
        # Holds personal data but never receives the erased event (stored before registration
        # refused that): owes nothing.
        async with world.sql.unit_of_work() as uow:
            endpoint = WebhookEndpoint("whep_deaf", down_url(), (PROFILE_CREATED,), True, world.clock.now())
            await uow.webhooks.add_endpoint(endpoint, BOX.seal(b"s" * 32))
            await uow.commit()
        profile_id = await a_profile_with_history(world)
        status = await world.personal_data.start_erasure(ADMIN, profile_id)
        runner = world.runner()
        worker = dispatcher(world.sql, world.clock, delays=())  # one attempt, then a dead letter
        try:
            await runner.run_due()
            waiting = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
            assert waiting["pending_holders"] == sorted([acknowledging.endpoint.id, silent.endpoint.id])
            await worker.run_once()
            await worker.settle()
        finally:
            await worker.stop()
            await worker.sender.close()
    [dead] = [d for d in await deliveries(world.sql, silent.endpoint.id) if d.event_type == PROFILE_ERASED]
    assert dead.state is DeliveryState.DEAD
    world.clock.advance(world.policy.acknowledgement_poll)
    await runner.run_due()
    assert (await world.personal_data.erasure_status(ADMIN, status.erasure.id)).pending_holders == (
        silent.endpoint.id,
    )

    # The dead letter is never replayed: past the give-up time the saga fails, and says what
    # was done.
    world.clock.advance(world.policy.give_up_after)
    await runner.run_due()
    failed = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    assert failed["state"] == "failed"
    assert failed["pending_holders"] == [silent.endpoint.id]
    assert failed["last_error"] == f"no acknowledgement yet from {silent.endpoint.id}"
    assert [step["done"] for step in failed["steps"]] == [True, True, True, True, False, False]
    assert await values_found(world.url, ERASED_VALUES) == {}  # what could be done, was
    world.clock.advance(world.policy.acknowledgement_poll)
    assert await runner.run_due() == 0  # a failed saga is not retried by itself

    # Asked again, it runs again from where it stopped; the endpoint is deleted: nothing pending.
    await keel.delete_endpoint(ADMIN, silent.endpoint.id)
    again = await world.personal_data.start_erasure(ADMIN, profile_id)
    assert again.erasure.id == status.erasure.id
    assert again.erasure.state is ErasureState.RUNNING
    await runner.run_due()
    assert (await erasure_state(world.store, profile_id)).state is ErasureState.COMPLETED


async def test_the_cache_step_fails_while_redis_cannot_tell_the_other_processes(world: World) -> None:
    """Keel's own drop of cached copies (the composition root's, over a real Redis): when the
    invalidation bus does not take the message, the step is not marked done but retried, since
    another process may still hold a copy of the erased profile."""
    profile_id = await a_profile_with_history(world)
    with redis_server() as redis:
        bus = RedisInvalidationBus.from_url(redis.url)
        reads = ProfileReads(
            world.sql, RetryPolicy(RetryBudget(), Backoff()), cache=BoundedProfileCache(100), bus=bus
        )
        _, runner, _ = build_personal_data(Settings(), world.store, world.clock, reads, lambda: None)
        try:
            await world.personal_data.start_erasure(ADMIN, profile_id)
            redis.stop()
            await runner.run_due()
            stuck = await erasure_state(world.store, profile_id)
            assert stuck.state is ErasureState.RUNNING
            assert stuck.caches_dropped_at is None
            assert stuck.last_error == "drop_cached_copies failed: CachedCopiesNotDropped"
            redis.start()
            world.clock.advance(world.policy.first_retry)
            await runner.run_due()
            assert (await erasure_state(world.store, profile_id)).caches_dropped_at is not None
        finally:
            await bus.close()


async def test_a_failing_step_is_retried_with_backoff_then_given_up(world: World) -> None:
    profile_id = await a_profile_with_history(world)
    failures: list[int] = []

    async def bus_down(profile_id: str, version: int) -> None:
        failures.append(version)
        raise ConnectionError("the invalidation bus is down")

    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    runner = world.runner(drop_cached=bus_down)
    await runner.run_due()
    first = await erasure_state(world.store, profile_id)
    assert first.state is ErasureState.RUNNING
    assert first.attempts == 1
    assert first.last_error == "drop_cached_copies failed: ConnectionError"
    assert first.data_removed_at is not None  # step 1 stays done
    assert await runner.run_due() == 0  # the backoff: not before next_attempt_at
    world.clock.advance(world.policy.first_retry)
    await runner.run_due()
    second = await erasure_state(world.store, profile_id)
    assert second.attempts == 2
    assert second.next_attempt_at - first.next_attempt_at > world.policy.first_retry  # doubled

    world.clock.advance(world.policy.give_up_after)
    await runner.run_due()
    failed = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    assert failed["state"] == "failed"
    assert [step["done"] for step in failed["steps"]] == [True, False, False, False, False, False]
    assert failures == [3, 3, 3]

    # The bus is back: asked again, the saga finishes.
    await world.personal_data.start_erasure(ADMIN, profile_id)
    await world.runner().run_due()
    assert (await erasure_state(world.store, profile_id)).state is ErasureState.COMPLETED


async def test_only_admins_erase_or_export_and_others_learn_nothing(world: World) -> None:
    profile_id = await a_profile_with_history(world)
    missing = profile_id[:-4] + "ZZZZ"
    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    refusals: list[str] = []
    for attempt in (
        world.personal_data.start_erasure(WRITER, profile_id),
        world.personal_data.start_erasure(WRITER, missing),
        world.personal_data.export_profile(WRITER, profile_id),
        world.personal_data.export_profile(WRITER, missing),
        world.personal_data.erasure_status(WRITER, status.erasure.id),
        world.personal_data.erasure_status(WRITER, "era_missing"),
    ):
        with pytest.raises(Forbidden) as refused:
            await attempt
        refusals.append(refused.value.detail)
    assert set(refusals) == {"Only admin keys may export or erase personal data."}


async def test_erasing_a_missing_profile_is_not_found_and_erasing_twice_is_one_erasure(world: World) -> None:
    profile_id = await a_profile_with_history(world)
    with pytest.raises(NotFound):
        await world.personal_data.start_erasure(ADMIN, profile_id[:-4] + "ZZZZ")
    with pytest.raises(NotFound):
        await world.personal_data.start_erasure(ADMIN, "not-an-id")
    with pytest.raises(NotFound):
        await world.personal_data.erasure_status(ADMIN, "era_missing")
    first = await world.personal_data.start_erasure(ADMIN, profile_id)
    second = await world.personal_data.start_erasure(ADMIN, profile_id)
    assert second.erasure.id == first.erasure.id
    await world.runner().run_due()
    third = await world.personal_data.start_erasure(ADMIN, profile_id)  # after completion too
    assert third.erasure.id == first.erasure.id
    assert third.erasure.state is ErasureState.COMPLETED
    assert await world.runner().run_due() == 0
    types = [r.event.type for r in await events_of(world.store, profile_id)]
    assert types.count(PROFILE_ERASED) == 1


async def test_the_purge_removes_soft_deleted_profiles_only_past_the_retention(
    world: World, storage_layout: str
) -> None:
    old_id = (await world.profiles.create_profile(WRITER, ERASED)).profile.id
    await world.profiles.delete_profile(WRITER, old_id)
    world.clock.advance(timedelta(days=2))
    recent_id = (await world.profiles.create_profile(WRITER, KEPT)).profile.id
    await world.profiles.delete_profile(WRITER, recent_id)
    live_id = (
        await world.profiles.create_profile(
            WRITER, {"handle": "alive_one", "emails": [{"address": "alive@example.com", "primary": True}]}
        )
    ).profile.id

    world.clock.advance(timedelta(days=29))  # old: 31 days deleted; recent: 29
    assert await world.personal_data.purge_deleted_profiles() == 1
    assert await values_found(world.url, ERASED_VALUES) == {}
    # The recent one's row is kept, in the layout the test runs on.
    main_table = "profiles" if storage_layout == "normalized" else "profile_documents"
    assert main_table in await values_found(world.url, ("kept-bio-value",))
    async with world.store.unit_of_work(read_only=True) as uow:
        tombstone = await uow.personal_data.tombstone(old_id)
        assert await uow.personal_data.tombstone(recent_id) is None
        assert await uow.profiles.get(live_id) is not None
    assert tombstone is not None
    assert tombstone.cause.value == "purge"
    assert tombstone.last_version == 2

    world.clock.advance(timedelta(days=1, seconds=1))
    assert await world.personal_data.purge_deleted_profiles() == 1
    assert await values_found(world.url, ("kept_one", "kept@example.com", "kept-bio-value")) == {}
    assert await world.personal_data.purge_deleted_profiles() == 0

    # A purged profile can still be erased: the saga tells the consumers, after its last version.
    status = await world.personal_data.start_erasure(ADMIN, old_id)
    await world.runner().run_due()
    assert (await erasure_state(world.store, old_id)).erased_version == 3
    assert (await world.personal_data.erasure_status(ADMIN, status.erasure.id)).erasure.state is (
        ErasureState.COMPLETED
    )


async def stream_texts(url: str) -> list[str]:
    """Every message the stream holds now, as text (a deleted message is not read)."""
    return [message.data.decode() async for message in read_stream(url, STREAM, 1)]


def found_in(texts: list[str], values: tuple[str, ...]) -> set[str]:
    joined = "\n".join(texts).lower()
    return {value for value in values if value.lower() in joined}


async def test_an_erasure_deletes_the_streams_copies_of_the_profiles_events_once_all_are_published(
    world: World,
) -> None:
    """Step 3 on a real NATS JetStream: the profile's messages go (the delete overwrites them),
    other profiles' stay; an event of the profile still unpublished holds the step back (a relay
    may hold it with its old payload) until the relay has published it."""
    with nats_server() as bus:
        stream = stream_publisher(bus)
        relay = OutboxRelay(world.sql, stream, world.clock, RelayPolicy())
        try:
            profile_id = await a_profile_with_history(world)
            await drain(relay, world.sql)
            assert found_in(await stream_texts(bus.url), ERASED_VALUES) >= {"zq_erasable", "Zebulon Q."}
            # One more change, not yet published when the erasure starts.
            await world.profiles.update_profile(WRITER, profile_id, {"display_name": "Zebulon"})
            status = await world.personal_data.start_erasure(ADMIN, profile_id)
            runner = world.runner(stream=stream)
            await runner.run_due()
            held = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
            assert held["next_step"] == "erase_stream_copies"
            assert held["last_error"] == "erase_stream_copies failed: StreamCopiesPending"

            await drain(relay, world.sql)  # publishes the update, its payload erased by step 1
            world.clock.advance(world.policy.first_retry)
            await runner.run_due()
            done = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
            assert done["state"] == "completed"
            await drain(relay, world.sql)  # and the erased event
            texts = await stream_texts(bus.url)
            assert found_in(texts, ERASED_VALUES) == set()
            assert found_in(texts, ("kept_one", "kept@example.com", "kept-bio-value")) == {
                "kept_one",
                "kept@example.com",
                "kept-bio-value",
            }
            # Of the profile, only the erased event stays (the update published after step 1,
            # in its erased form, went with the others).
            events = [json.loads(text) for text in texts]
            assert [e["type"] for e in events if e["subject"] == profile_id] == [PROFILE_ERASED]
            # The erased event is never among the copies to erase (a saga upgraded past step 4
            # runs step 3 after it): consumers must keep seeing it.
            async with world.sql.unit_of_work(read_only=True) as uow:
                copies = await uow.outbox.stream_copies(profile_id)
            erased_ids = {e["id"] for e in events if e["type"] == PROFILE_ERASED}
            assert copies.positions
            assert not erased_ids & {event_id for _, event_id in copies.positions}
        finally:
            await stream.close()


async def test_a_position_that_now_holds_another_event_is_left_alone(world: World) -> None:
    """A stream deleted and created again restarts its positions: the erasure deletes a
    recorded position only if the message there is the event recorded with it."""
    with nats_server() as bus:
        stream = stream_publisher(bus)
        relay = OutboxRelay(world.sql, stream, world.clock, RelayPolicy())
        try:
            profile_id = await a_profile_with_history(world)  # and the kept profile
            await drain(relay, world.sql)
            client = await nats.connect(bus.url)
            try:
                assert await client.jetstream().delete_stream(STREAM)
            finally:
                await client.close()
            # Another profile's events take the same positions in the new stream.
            other = await world.profiles.create_profile(
                WRITER, {"handle": "other_one", "emails": [{"address": "other@example.com", "primary": True}]}
            )
            await world.profiles.update_profile(WRITER, other.profile.id, {"bio": "other-bio"})
            await world.profiles.update_profile(WRITER, other.profile.id, {"bio": "other-bio-2"})
            await drain(relay, world.sql)
            before = await stream_texts(bus.url)
            status = await world.personal_data.start_erasure(ADMIN, profile_id)
            await world.runner(stream=stream).run_due()
            done = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
            assert done["state"] == "completed"
            after = await stream_texts(bus.url)
        finally:
            await stream.close()
    assert len(before) == 3  # the other profile's three events, at positions 1 to 3
    assert after[:3] == before  # none of them deleted (the erased profile's were at 1 to 2)


async def test_an_erasure_without_an_event_stream_skips_the_streams_step(world: World) -> None:
    profile_id = await a_profile_with_history(world)
    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    await world.runner().run_due()  # no stream: the relay publishes nowhere
    done = plain(await world.personal_data.erasure_status(ADMIN, status.erasure.id))
    assert done["state"] == "completed"
    assert [s["name"] for s in done["steps"] if s["done"]] == [s.value for s in ErasureStep]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_0007_up_and_down_leaves_the_database_as_it_was(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0007")
    await asyncio.to_thread(migrate, url, "0006")
    created = (
        "2026-11-28T12:00:00.000000+00:00" if kind == "sqlite" else datetime(2026, 11, 28, 12, tzinfo=UTC)
    )
    await query(
        url,
        "INSERT INTO event_outbox (id, type, source, subject, time, data, published_at, fanned_out_at)"
        " VALUES ('e1', 'keel.profile.created.v1', '/keel', 'p1', $1, '{}', $2, $3)",
        *[created] * 3,
    )
    before = await everything(url)
    await asyncio.to_thread(migrate, url, "0007")
    assert await revision(url) == "0007"
    schema = json.dumps((await everything(url))["schema"], default=str)
    assert "stream_seq" in schema
    assert "stream_copies_erased_at" in schema
    assert schema.count("traceparent") >= 2  # the outbox's and the deliveries'
    await asyncio.to_thread(downgrade, url, "0006")
    assert await everything(url) == before


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_0006_up_and_down_leaves_the_database_as_it_was(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_migration_0006")
    await asyncio.to_thread(migrate, url, "0005")
    created = (
        "2026-11-28T12:00:00.000000+00:00" if kind == "sqlite" else datetime(2026, 11, 28, 12, tzinfo=UTC)
    )
    await query(
        url,
        "INSERT INTO profiles (id, handle, attributes, version, created_at, updated_at)"
        " VALUES ('eu1_01JEXAMPLE000000000000000', 'kept_handle', '{}', 1, $1, $2)",
        *[created] * 2,
    )
    before = await everything(url)
    await asyncio.to_thread(migrate, url, "0006")
    assert await revision(url) == "0006"
    tables = await everything(url)
    assert set(tables["rows"]) - set(before["rows"]) == {
        "profile_erasures",
        "profile_tombstones",
        "erasure_acknowledgements",
    }
    await asyncio.to_thread(downgrade, url, "0005")
    assert await everything(url) == before


async def until_a_query_waits_on_a_lock(url: str) -> None:
    """Returns once another session of this database waits on a lock (PostgreSQL's own record
    of it, not a guess at how long that takes); fails past the deadline."""
    waiting = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            if await query(url, waiting):
                return
            await asyncio.sleep(0.01)  # between looks: PostgreSQL offers no event to await


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_update_committing_during_the_erasure_leaves_no_personal_value_and_a_higher_version(
    world: World,
) -> None:
    """An update in flight when step 1 starts: the step waits for it, then erases its event too,
    and the erased version is above the update's (consumers keep the higher version)."""
    profile_id = await a_profile_with_history(world)
    status = await world.personal_data.start_erasure(ADMIN, profile_id)
    async with world.sql.unit_of_work() as uow:
        current = await uow.profiles.get(profile_id)
        assert current is not None
        racing = current.revise(replace(current.fields, display_name="Zebulon Racer"), world.clock.now())
        await uow.profiles.update(racing, expected_version=current.version)
        await uow.outbox.add(profile_changed(racing), "test")
        erasing = asyncio.create_task(world.runner().run_due())
        try:
            await until_a_query_waits_on_a_lock(world.url)
            await uow.commit()
        except BaseException:
            erasing.cancel()
            raise
    async with asyncio.timeout(DEADLINE_SECONDS):
        assert await erasing == 1

    erasure = await erasure_state(world.store, profile_id)
    assert erasure.id == status.erasure.id
    assert erasure.state is ErasureState.COMPLETED
    assert erasure.erased_version == racing.version + 1
    # The caches' floor is the erased version: a write-through of the racing update (its
    # version, one below) landing after the drop is refused (the cache keeps versions >= floor).
    assert world.dropped == [(profile_id, racing.version + 1)]
    events = await events_of(world.store, profile_id)
    assert [r.event.type for r in events] == [
        "keel.profile.created.v1",
        "keel.profile.updated.v1",
        "keel.profile.updated.v1",
        PROFILE_ERASED,
    ]
    payloads = json.dumps([r.event.data for r in events]).lower()
    assert [value for value in ERASED_VALUES if value.lower() in payloads] == []
    assert "zebulon racer" not in payloads
    earlier = [r.event.data["version"] for r in events[:-1]]
    assert all(isinstance(v, int) for v in earlier)
    assert events[-1].event.data["version"] == erasure.erased_version
    assert erasure.erased_version > max(v for v in earlier if isinstance(v, int))
    assert await values_found(world.url, (*ERASED_VALUES, "Zebulon Racer")) == {}
