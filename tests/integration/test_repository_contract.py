"""One contract, every storage adapter and layout: SQLite and PostgreSQL, the normalized and the
document layout of profiles, must behave the same."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keel.domain.api_keys import ApiKey, AuditEntry, Scope
from keel.domain.errors import Conflict, VersionMismatch
from keel.domain.ids import new_profile_id
from keel.domain.profile import Email, Link, Profile, ProfileFields
from keel.service.ports import IdempotencyRecord, IdempotencyState, ProfileQuery, Store

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["normalized", "document"])
def storage_layout(request: pytest.FixtureRequest) -> str:
    """Every test of the contract on both layouts (the `store` fixture opens it in this one)."""
    layout: str = request.param
    return layout


def make_profile(handle: str = "ada_l", email: str = "ada@example.com") -> Profile:
    values = ProfileFields(
        handle=handle,
        emails=(Email(email, verified=True, primary=True), Email(f"alt.{email}")),
        display_name="Ada",
        locale="en-GB",
        timezone="Europe/London",
        links=(Link("site", "https://ada.dev"), Link("code", "https://git.example/ada")),
        attributes={"plan": "pro", "score": 3, "beta": True},
    )
    return Profile.create(new_profile_id("eu1"), values, NOW)


async def add(store: Store, profile: Profile) -> None:
    async with store.unit_of_work() as uow:
        await uow.profiles.add(profile)
        await uow.commit()


async def get(store: Store, profile_id: str) -> Profile | None:
    async with store.unit_of_work(read_only=True) as uow:
        return await uow.profiles.get(profile_id)


async def test_a_profile_round_trips_whole(store: Store) -> None:
    profile = make_profile()
    await add(store, profile)
    assert await get(store, profile.id) == profile


async def test_leaving_without_commit_rolls_back(store: Store) -> None:
    profile = make_profile()
    async with store.unit_of_work() as uow:
        await uow.profiles.add(profile)
    assert await get(store, profile.id) is None


async def test_an_error_rolls_back_everything_in_the_unit(store: Store) -> None:
    first, second = make_profile(), make_profile(handle="other", email="x@example.com")
    await add(store, make_profile(handle="taken", email="taken@example.com"))
    with pytest.raises(Conflict):
        async with store.unit_of_work() as uow:
            await uow.profiles.add(first)
            await uow.profiles.add(second)
            await uow.profiles.add(make_profile(handle="taken", email="new@example.com"))
            await uow.commit()
    assert await get(store, first.id) is None
    assert await get(store, second.id) is None


async def test_handles_and_emails_are_unique_among_live_profiles(store: Store) -> None:
    await add(store, make_profile())
    with pytest.raises(Conflict) as caught:
        await add(store, make_profile(email="other@example.com"))
    assert caught.value.field == "/handle"
    with pytest.raises(Conflict) as caught:
        await add(store, make_profile(handle="someone", email="ADA@example.com"))
    assert caught.value.field == "/emails"


async def test_concurrent_creates_of_one_handle_admit_exactly_one(store: Store) -> None:
    async def attempt(n: int) -> bool:
        try:
            await add(store, make_profile(email=f"n{n}@example.com"))
        except Conflict:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(n) for n in range(8)))
    assert outcomes.count(True) == 1


async def test_concurrent_creates_of_one_email_admit_exactly_one(store: Store) -> None:
    async def attempt(n: int) -> str | None:
        try:
            await add(store, make_profile(handle=f"user_{n}", email="SHARED@example.com"))
        except Conflict as conflict:
            return conflict.field
        return None

    outcomes = await asyncio.gather(*(attempt(n) for n in range(8)))
    assert (outcomes.count(None), outcomes.count("/emails")) == (1, 7)


async def test_update_checks_the_expected_version(store: Store) -> None:
    profile = make_profile()
    await add(store, profile)
    revised = profile.revise(replace(profile.fields, bio="hello", links=()), NOW + timedelta(seconds=1))
    async with store.unit_of_work() as uow:
        await uow.profiles.update(revised, expected_version=1)
        await uow.commit()
    assert await get(store, profile.id) == revised
    with pytest.raises(VersionMismatch):
        async with store.unit_of_work() as uow:
            await uow.profiles.update(revised.revise(revised.fields, NOW), expected_version=1)


async def test_soft_delete_hides_and_frees_handle_and_emails(store: Store) -> None:
    profile = make_profile()
    await add(store, profile)
    async with store.unit_of_work() as uow:
        await uow.profiles.update(profile.delete(NOW + timedelta(seconds=1)), expected_version=1)
        await uow.commit()
    assert await get(store, profile.id) is None
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.profiles.find(ProfileQuery(limit=10)) == []
    await add(store, make_profile())  # same handle and emails: free again


async def test_find_filters_and_keyset_order(store: Store) -> None:
    profiles = [make_profile(handle=f"user_{n}", email=f"u{n}@example.com") for n in range(5)]
    for profile in profiles:
        await add(store, profile)
    ordered = sorted(profiles, key=lambda p: p.id)
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.profiles.find(ProfileQuery(limit=2)) == ordered[:2]
        assert await uow.profiles.find(ProfileQuery(limit=10, after_id=ordered[1].id)) == ordered[2:]
        assert await uow.profiles.find(ProfileQuery(limit=10, handle="user_3")) == [profiles[3]]
        assert await uow.profiles.find(ProfileQuery(limit=10, email="alt.u2@example.com")) == [profiles[2]]
        by_ids = await uow.profiles.find(ProfileQuery(limit=10, ids=(profiles[4].id, profiles[0].id)))
        assert by_ids == sorted([profiles[0], profiles[4]], key=lambda p: p.id)


def _record(key: str, fingerprint: str = "f1", lease: timedelta = timedelta(seconds=60)) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope="k1:create_profile",
        key=key,
        fingerprint=fingerprint,
        state=IdempotencyState.IN_PROGRESS,
        outcome=None,
        locked_until=NOW + lease,
        expires_at=NOW + timedelta(hours=24),
    )


async def test_idempotency_records(store: Store) -> None:
    async with store.unit_of_work() as uow:
        assert await uow.idempotency.reserve(_record("a"), NOW) is None
        await uow.commit()
    async with store.unit_of_work() as uow:
        held = await uow.idempotency.reserve(_record("a", "f2"), NOW + timedelta(seconds=1))
        assert held is not None
        assert (held.fingerprint, held.state) == ("f1", IdempotencyState.IN_PROGRESS)
        # Only the reservation's own request (its fingerprint, still in progress) completes it.
        assert not await uow.idempotency.complete("k1:create_profile", "a", "f2", '{"other": true}')
        assert await uow.idempotency.complete("k1:create_profile", "a", "f1", '{"done": true}')
        assert not await uow.idempotency.complete("k1:create_profile", "a", "f1", '{"again": true}')
        await uow.commit()
    async with store.unit_of_work() as uow:
        done = await uow.idempotency.reserve(_record("a"), NOW + timedelta(minutes=5))
        assert done is not None
        assert (done.state, done.outcome) == (IdempotencyState.COMPLETED, '{"done": true}')
        # After 24 h the key is forgotten and can be reused.
        assert await uow.idempotency.reserve(_record("a"), NOW + timedelta(hours=25)) is None
        await uow.commit()


async def test_abandoned_reservations_can_be_taken_over_and_released(store: Store) -> None:
    async with store.unit_of_work() as uow:
        assert await uow.idempotency.reserve(_record("b"), NOW) is None
        assert await uow.idempotency.reserve(_record("b"), NOW + timedelta(seconds=61)) is None
        await uow.idempotency.release("k1:create_profile", "b")
        assert await uow.idempotency.reserve(_record("b"), NOW + timedelta(seconds=62)) is None
        assert await uow.idempotency.purge_expired(NOW + timedelta(days=2)) == 1
        await uow.commit()


async def test_api_keys_round_trip(store: Store) -> None:
    key = ApiKey(
        id="abcdefghijklmnop",
        secret_hash="0" * 64,
        scopes=frozenset({Scope.PROFILES_READ, Scope.ADMIN}),
        api_version="2026-11-28",
        name="ops",
        created_at=NOW,
        plan="partner",
    )
    async with store.unit_of_work() as uow:
        await uow.api_keys.add(key)
        await uow.commit()
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.api_keys.get(key.id) == key
        assert await uow.api_keys.get("missing") is None
        assert await uow.api_keys.list_all() == [key]
    async with store.unit_of_work() as uow:
        assert await uow.api_keys.revoke(key.id, NOW + timedelta(hours=1))
        assert not await uow.api_keys.revoke(key.id, NOW + timedelta(hours=2))
        assert not await uow.api_keys.revoke("missing", NOW)
        await uow.commit()
    async with store.unit_of_work(read_only=True) as uow:
        revoked = await uow.api_keys.get(key.id)
    assert revoked is not None
    assert revoked.revoked_at == NOW + timedelta(hours=1)


async def test_an_api_key_update_stores_its_secrets_and_expiries(store: Store) -> None:
    key = ApiKey(
        id="bcdefghijklmnopq",
        secret_hash="1" * 64,
        scopes=frozenset({Scope.PROFILES_READ}),
        api_version="2026-11-28",
        name="billing",
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
    )
    async with store.unit_of_work() as uow:
        await uow.api_keys.add(key)
        await uow.commit()
    rotated = replace(
        key,
        name="billing-v2",
        scopes=frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}),
        plan="partner",
        secret_hash="2" * 64,
        previous_secret_hash="1" * 64,
        previous_expires_at=NOW + timedelta(hours=1),
        expires_at=NOW + timedelta(days=2),
    )
    async with store.unit_of_work() as uow:
        await uow.api_keys.update(rotated)
        await uow.commit()
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.api_keys.get(key.id) == rotated
        # Found by either secret's verifier; by neither once the previous one is cleared.
        assert await uow.api_keys.by_verifier("2" * 64) == rotated
        assert await uow.api_keys.by_verifier("1" * 64) == rotated
        assert await uow.api_keys.by_verifier("3" * 64) is None


async def test_a_key_read_for_update_is_held_until_the_change_commits(
    store: Store, database_url: str
) -> None:
    """What keeps two admin actions, or an action and a CLI revocation, from undoing each other:
    while a write unit has read a key for update, no other writer changes it (a revocation
    overwritten by a change built from a stale read brought a revoked key back)."""
    key = ApiKey(
        id="cdefghijklmnopqr",
        secret_hash="4" * 64,
        scopes=frozenset({Scope.PROFILES_READ}),
        api_version="2026-11-28",
        name="locked",
        created_at=NOW,
    )
    async with store.unit_of_work() as uow:
        await uow.api_keys.add(key)
        await uow.commit()
    async with store.unit_of_work() as uow:
        assert await uow.api_keys.get_for_update(key.id) == key
        assert await _another_writer_is_kept_out(database_url, key.id)
        await uow.commit()
    assert not await _another_writer_is_kept_out(database_url, key.id)  # released at the end


async def _another_writer_is_kept_out(database_url: str, key_id: str) -> bool:
    """Whether a revocation from another connection is refused for now (its wait for the lock
    bounded to 50 ms: only a failure's bound, the lock is held or not)."""
    if database_url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(
            database_url.removeprefix("sqlite:///"), timeout=0.05, isolation_level=None
        )
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        finally:
            connection.close()  # rolls back the transaction it may have begun
        return False
    import asyncpg

    pg = await asyncpg.connect(database_url)
    try:
        await pg.execute("SET lock_timeout = '50ms'")
        async with pg.transaction():
            await pg.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_id)
            raise _RolledBack
    except asyncpg.LockNotAvailableError:
        return True
    except _RolledBack:
        return False
    finally:
        await pg.close()


class _RolledBack(Exception):
    """Leaves the probe's transaction without committing what it changed."""


async def test_audit_entries_page_newest_first_by_subject(store: Store) -> None:
    entries = [
        AuditEntry(
            at=NOW + timedelta(seconds=n), actor="admin", action=f"key.a{n}", subject=subject, detail={"n": n}
        )
        for n, subject in enumerate(["k1", "k2", "k1", "k1"])
    ]
    async with store.unit_of_work() as uow:
        for entry in entries:
            await uow.audit.add(entry)
        await uow.commit()
    async with store.unit_of_work(read_only=True) as uow:
        newest = await uow.audit.entries(limit=2, before=None, subject=None)
        assert [e.action for e in newest] == ["key.a3", "key.a2"]
        assert newest[0].detail == {"n": 3}
        assert newest[0].at == NOW + timedelta(seconds=3)
        assert newest[0].seq is not None
        older = await uow.audit.entries(limit=10, before=newest[-1].seq, subject=None)
        assert [e.action for e in older] == ["key.a1", "key.a0"]
        of_k1 = await uow.audit.entries(limit=10, before=None, subject="k1")
        assert [e.action for e in of_k1] == ["key.a3", "key.a2", "key.a0"]


async def test_schema_revision_is_the_head(store: Store) -> None:
    from keel.storage.migrations.runner import head_revision

    assert await store.schema_revision() == head_revision()
