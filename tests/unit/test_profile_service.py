"""The use cases, on in-memory adapters."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import (
    Conflict,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    NotFound,
    ValidationFailed,
    VersionMismatch,
)
from keel.service.attributes import AttributePolicy
from keel.service.profiles import IDEMPOTENCY_LEASE, ProfileService
from keel.service.use_cases import ListFilters
from tests.fakes import FakeClock, InMemoryStore, InMemoryUnitOfWork

WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
READER = Principal("reader", frozenset({Scope.PROFILES_READ}), "2026-11-28")
ADMIN = Principal("admin", frozenset({Scope.ADMIN}), "2026-11-28")
POLICY = AttributePolicy(
    {
        "type": "object",
        "properties": {"plan": {"type": "string"}, "risk": {"type": "number", "private": True}},
    }
)


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(store: InMemoryStore, clock: FakeClock) -> ProfileService:
    return ProfileService(store, clock, POLICY, "eu1")


def doc(handle: str = "ada_l", email: str = "ada@example.com", **extra: Any) -> dict[str, Any]:
    return {"handle": handle, "emails": [{"address": email, "primary": True}], **extra}


class PausingStore(InMemoryStore):
    """Holds the first unit of work it commits (a create's reservation of its idempotency key)
    until `resume` is set: that request is then in flight between reserving its key and
    writing its profile."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> InMemoryUnitOfWork:
        return _PausingUnitOfWork(self)


class _PausingUnitOfWork(InMemoryUnitOfWork):
    def __init__(self, store: PausingStore) -> None:
        super().__init__(store)
        self._pausing = store

    async def commit(self) -> None:
        await super().commit()
        if not self._pausing.paused.is_set():
            self._pausing.paused.set()
            await self._pausing.resume.wait()


async def test_create_then_read(service: ProfileService) -> None:
    created = await service.create_profile(WRITER, doc(display_name="Ada"))
    assert not created.replayed
    assert created.profile.id.startswith("eu1_")
    assert created.profile.version == 1
    read = await service.get_profile(READER, created.profile.id)
    assert read == created.profile


async def test_scopes_are_enforced(service: ProfileService) -> None:
    with pytest.raises(Forbidden):
        await service.create_profile(READER, doc())
    nobody = Principal("none", frozenset(), "2026-11-28")
    with pytest.raises(Forbidden):
        await service.get_profile(nobody, "eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J")


async def test_unknown_and_malformed_ids_are_not_found(service: ProfileService) -> None:
    for profile_id in ("eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J", "garbage"):
        with pytest.raises(NotFound):
            await service.get_profile(READER, profile_id)


async def test_handle_and_email_are_unique_until_deleted(service: ProfileService) -> None:
    first = await service.create_profile(WRITER, doc())
    with pytest.raises(Conflict) as caught:
        await service.create_profile(WRITER, doc(email="other@example.com"))
    assert caught.value.field == "/handle"
    with pytest.raises(Conflict) as caught:
        await service.create_profile(WRITER, doc(handle="other", email="ADA@example.com"))
    assert caught.value.field == "/emails"
    await service.delete_profile(WRITER, first.profile.id)
    with pytest.raises(NotFound):
        await service.get_profile(READER, first.profile.id)
    again = await service.create_profile(WRITER, doc())
    assert again.profile.id != first.profile.id


async def test_merge_patch_update_bumps_the_version(service: ProfileService) -> None:
    created = (await service.create_profile(WRITER, doc(bio="hello", attributes={"plan": "free"}))).profile
    updated = await service.update_profile(
        WRITER, created.id, {"bio": None, "display_name": "Ada", "attributes": {"plan": "pro"}}
    )
    assert updated.version == 2
    assert updated.fields.bio is None
    assert updated.fields.display_name == "Ada"
    assert updated.fields.attributes == {"plan": "pro"}
    assert updated.created_at == created.created_at < updated.updated_at


async def test_a_patch_that_changes_nothing_keeps_the_version(service: ProfileService) -> None:
    created = (await service.create_profile(WRITER, doc(display_name="Ada"))).profile
    same = await service.update_profile(WRITER, created.id, {"display_name": "Ada"})
    assert same.version == 1


async def test_expected_version_is_checked(service: ProfileService) -> None:
    created = (await service.create_profile(WRITER, doc())).profile
    await service.update_profile(WRITER, created.id, {"bio": "one"}, expected_version=1)
    with pytest.raises(VersionMismatch) as caught:
        await service.update_profile(WRITER, created.id, {"bio": "two"}, expected_version=1)
    assert caught.value.current_version == 2
    with pytest.raises(VersionMismatch):
        await service.delete_profile(WRITER, created.id, expected_version=1)


async def test_invalid_patches_are_rejected_without_change(service: ProfileService) -> None:
    created = (await service.create_profile(WRITER, doc())).profile
    with pytest.raises(ValidationFailed):
        await service.update_profile(WRITER, created.id, {"handle": None})
    with pytest.raises(ValidationFailed):
        await service.update_profile(WRITER, created.id, ["not", "an", "object"])
    assert (await service.get_profile(READER, created.id)).version == 1


async def test_private_attributes(service: ProfileService) -> None:
    with pytest.raises(Forbidden):
        await service.create_profile(WRITER, doc(attributes={"risk": 0.5}))
    created = (await service.create_profile(ADMIN, doc(attributes={"plan": "free", "risk": 0.5}))).profile
    assert created.fields.attributes == {"plan": "free", "risk": 0.5}
    assert (await service.get_profile(READER, created.id)).fields.attributes == {"plan": "free"}
    # A non-admin patch keeps what it cannot see, and cannot touch it.
    await service.update_profile(WRITER, created.id, {"attributes": {"plan": "pro"}})
    assert (await service.get_profile(ADMIN, created.id)).fields.attributes == {"plan": "pro", "risk": 0.5}
    with pytest.raises(Forbidden):
        await service.update_profile(WRITER, created.id, {"attributes": {"risk": None}})


async def test_idempotent_create_replays(service: ProfileService, store: InMemoryStore) -> None:
    first = await service.create_profile(WRITER, doc(), idempotency_key="k1")
    second = await service.create_profile(WRITER, doc(), idempotency_key="k1")
    assert second.replayed
    assert second.profile == first.profile
    assert len(store.tables.profiles) == 1
    with pytest.raises(IdempotencyKeyReused):
        await service.create_profile(WRITER, doc(handle="someone_else"), idempotency_key="k1")


async def test_idempotency_keys_are_scoped_per_api_key(service: ProfileService) -> None:
    other_writer = Principal("other", WRITER.scopes, WRITER.api_version)
    await service.create_profile(WRITER, doc(), idempotency_key="k1")
    with pytest.raises(Conflict):  # same key, other client: a new request, which conflicts on handle
        await service.create_profile(other_writer, doc(), idempotency_key="k1")


async def test_a_failed_request_frees_its_key(service: ProfileService) -> None:
    await service.create_profile(WRITER, doc())
    with pytest.raises(Conflict):
        await service.create_profile(WRITER, doc(email="b@example.com"), idempotency_key="k2")
    await service.delete_profile(
        WRITER, (await service.list_profiles(READER, ListFilters(), limit=1, cursor=None)).profiles[0].id
    )
    created = await service.create_profile(WRITER, doc(email="b@example.com"), idempotency_key="k2")
    assert not created.replayed


async def test_in_progress_key_is_a_conflict_until_its_lease_ends(clock: FakeClock) -> None:
    store = PausingStore()
    service = ProfileService(store, clock, POLICY, "eu1")
    holder = asyncio.create_task(service.create_profile(WRITER, doc(), idempotency_key="k3"))
    await store.paused.wait()  # the same request, still in flight: its key is reserved
    with pytest.raises(IdempotencyInProgress):
        await service.create_profile(WRITER, doc(), idempotency_key="k3")
    # The holder died before committing (its outcome commits with its write): take over.
    clock.advance(IDEMPOTENCY_LEASE + timedelta(seconds=1))
    created = await service.create_profile(WRITER, doc(), idempotency_key="k3")
    assert not created.replayed
    store.resume.set()
    # The holder, back too late, writes nothing: its profile collides with the one just made,
    # or its key is found taken over.
    with pytest.raises((Conflict, IdempotencyInProgress)):
        await holder
    assert list(store.tables.profiles) == [created.profile.id]


async def test_equivalent_bodies_share_an_idempotency_key(service: ProfileService) -> None:
    await service.create_profile(WRITER, doc(), idempotency_key="k4")
    spelled_out = doc(
        handle="ADA_L", emails=[{"address": "ada@example.com", "primary": True, "verified": False}]
    )
    assert (await service.create_profile(WRITER, spelled_out, idempotency_key="k4")).replayed


async def test_keyset_pagination_visits_every_profile_once(service: ProfileService) -> None:
    ids = [
        (
            await service.create_profile(WRITER, doc(handle=f"user_{i:02}", email=f"u{i}@example.com"))
        ).profile.id
        for i in range(25)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list_profiles(READER, ListFilters(), limit=10, cursor=cursor)
        seen.extend(p.id for p in page.profiles)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids)


async def test_list_filters(service: ProfileService) -> None:
    a = (await service.create_profile(WRITER, doc(handle="alpha", email="a@example.com"))).profile
    b = (await service.create_profile(WRITER, doc(handle="beta", email="b@example.com"))).profile
    by_handle = await service.list_profiles(READER, ListFilters(handle="ALPHA"), limit=10, cursor=None)
    assert [p.id for p in by_handle.profiles] == [a.id]
    by_email = await service.list_profiles(READER, ListFilters(email="B@example.com"), limit=10, cursor=None)
    assert [p.id for p in by_email.profiles] == [b.id]
    by_ids = await service.list_profiles(READER, ListFilters(ids=(b.id, "junk")), limit=10, cursor=None)
    assert [p.id for p in by_ids.profiles] == [b.id]


async def test_list_limits_and_foreign_cursors(service: ProfileService) -> None:
    with pytest.raises(ValidationFailed):
        await service.list_profiles(READER, ListFilters(), limit=101, cursor=None)
    with pytest.raises(ValidationFailed):
        await service.list_profiles(
            READER, ListFilters(ids=tuple(f"x{i}" for i in range(101))), limit=10, cursor=None
        )
    for i in range(3):
        await service.create_profile(WRITER, doc(handle=f"user_{i}", email=f"u{i}@example.com"))
    page = await service.list_profiles(READER, ListFilters(), limit=1, cursor=None)
    assert page.next_cursor is not None
    with pytest.raises(ValidationFailed):
        await service.list_profiles(READER, ListFilters(handle="user_1"), limit=1, cursor=page.next_cursor)
    with pytest.raises(ValidationFailed):
        await service.list_profiles(READER, ListFilters(), limit=1, cursor="not-a-cursor")


async def test_a_null_attributes_patch_keeps_private_attributes(service: ProfileService) -> None:
    created = (await service.create_profile(ADMIN, doc(attributes={"plan": "free", "risk": 0.5}))).profile
    await service.update_profile(WRITER, created.id, {"attributes": None})
    assert (await service.get_profile(ADMIN, created.id)).fields.attributes == {"risk": 0.5}


async def test_a_request_that_outlived_its_lease_does_not_write(clock: FakeClock) -> None:
    store = PausingStore()
    service = ProfileService(store, clock, POLICY, "eu1")
    late = asyncio.create_task(service.create_profile(WRITER, doc(), idempotency_key="k5"))
    await store.paused.wait()  # the key is reserved, the profile not written yet
    clock.advance(IDEMPOTENCY_LEASE + timedelta(seconds=1))  # the request outlives its lease
    # Another request takes the key over and writes; then the late one goes on.
    other = doc(handle="grace_h", email="grace@example.com")
    taken = await service.create_profile(WRITER, other, idempotency_key="k5")
    store.resume.set()
    with pytest.raises(IdempotencyInProgress):
        await late
    # Its write was rolled back, not stored beside the new owner's; the key answers the owner's.
    assert [profile.handle for profile in store.tables.profiles.values()] == ["grace_h"]
    replay = await service.create_profile(WRITER, other, idempotency_key="k5")
    assert replay.replayed
    assert replay.profile.id == taken.profile.id
