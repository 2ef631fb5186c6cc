"""The use cases, on in-memory adapters."""

from __future__ import annotations

from datetime import datetime, timedelta
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
from keel.service.ports import IdempotencyRecord, IdempotencyState
from keel.service.profiles import IDEMPOTENCY_LEASE, IDEMPOTENCY_TTL, ListFilters, ProfileService
from tests.fakes import FakeClock, InMemoryStore

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


async def hold_reservation(store: InMemoryStore, key: str, fingerprint: str, now: datetime) -> None:
    """Another request of WRITER's holds `key` (in progress, lease running)."""
    record = IdempotencyRecord(
        "writer:create_profile",
        key,
        fingerprint,
        IdempotencyState.IN_PROGRESS,
        None,
        now + IDEMPOTENCY_LEASE,
        now + IDEMPOTENCY_TTL,
    )
    async with store.unit_of_work() as uow:
        await uow.idempotency.reserve(record, now)
        await uow.commit()


def doc(handle: str = "ada_l", email: str = "ada@example.com", **extra: Any) -> dict[str, Any]:
    return {"handle": handle, "emails": [{"address": email, "primary": True}], **extra}


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


async def test_in_progress_key_is_a_conflict_until_its_lease_ends(
    service: ProfileService, store: InMemoryStore, clock: FakeClock
) -> None:
    from keel.service.profile_input import fields_document, parse_profile_fields
    from keel.service.profiles import _fingerprint

    now = clock.now()
    fingerprint = _fingerprint("create_profile", fields_document(parse_profile_fields(doc(), POLICY)))
    await hold_reservation(store, "k3", fingerprint, now)
    with pytest.raises(IdempotencyInProgress):
        await service.create_profile(WRITER, doc(), idempotency_key="k3")
    # The holder died before committing (its outcome commits with its write): take over.
    clock.advance(IDEMPOTENCY_LEASE + timedelta(seconds=1))
    created = await service.create_profile(WRITER, doc(), idempotency_key="k3")
    assert not created.replayed


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


async def test_a_request_that_outlived_its_lease_does_not_write(
    service: ProfileService, store: InMemoryStore, clock: FakeClock
) -> None:

    now = clock.now()
    # another request now owns the key
    await hold_reservation(store, "k5", "someone-else", now)
    from keel.service.profile_input import parse_profile_fields

    stale_owner = ("writer:create_profile", "k5", "my-fingerprint")
    with pytest.raises(IdempotencyInProgress):
        await service._insert(parse_profile_fields(doc(), POLICY), stale_owner)
    assert store.tables.profiles == {}
