"""API keys managed by an admin (keel.service.api_key_admin), on the in-memory store with a
settable clock: who may, what is refused, and what each change does to authentication, at once
in this process (its cache forgotten) and at the times the caller set (a rotated-out secret, an
expiry), whatever the key cache still holds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import Forbidden, NotFound, Unauthenticated, ValidationFailed
from keel.domain.events import ADMIN_ACTION
from keel.service.api_key_admin import ApiKeyAdmin
from keel.service.auth import Authenticator, issue_api_key
from tests.fakes import FakeClock, InMemoryStore

VERSION = "2026-11-28"


class World:
    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.clock = FakeClock()
        self.authenticator = Authenticator(self.store, ttl=3600, clock=self.clock)
        self.changed: list[str] = []

        async def on_changed(key_id: str) -> None:
            self.changed.append(key_id)
            self.authenticator.forget_key(key_id)

        self.admin = ApiKeyAdmin(
            self.store,
            self.clock,
            plans=["standard", "partner"],
            default_plan="standard",
            api_versions=[VERSION],
            newest_version=VERSION,
            on_changed=on_changed,
        )

    async def admin_principal(self) -> Principal:
        issued = await issue_api_key(
            self.store, self.clock, scopes=[Scope.ADMIN], api_version=VERSION, name="ops"
        )
        return await self.authenticator.authenticate(issued.token)


@pytest.fixture
def world() -> World:
    return World()


async def test_an_admin_creates_a_key_that_works_and_is_recorded(world: World) -> None:
    admin = await world.admin_principal()
    issued = await world.admin.create(admin, name="billing", scopes=["profiles:read"], plan="partner")
    principal = await world.authenticator.authenticate(issued.token)
    assert principal.scopes == frozenset({Scope.PROFILES_READ})
    assert principal.plan == "partner"
    [entry] = await world.admin.audit(admin, limit=10)
    assert (entry.actor, entry.action, entry.subject) == (admin.key_id, "key.created", issued.key.id)
    assert issued.token not in str(entry.detail)
    assert issued.token.split("_")[2] not in str(entry.detail)


async def test_only_admin_keys_may_manage_keys(world: World) -> None:
    reader = Principal(key_id="r" * 16, scopes=frozenset({Scope.PROFILES_READ}), api_version=VERSION)
    edge = Principal(key_id="e" * 16, scopes=frozenset({Scope.EDGE}), api_version=VERSION)
    for caller in (reader, edge):
        with pytest.raises(Forbidden):
            await world.admin.list_keys(caller)
        with pytest.raises(Forbidden):
            await world.admin.create(caller, name="x", scopes=["profiles:read"])
        with pytest.raises(Forbidden):
            await world.admin.revoke(caller, "k" * 16)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scopes": ["edge"]}, "/scopes"),  # an admin may not mint a key that acts as anyone
        ({"scopes": ["root"]}, "/scopes"),
        ({"scopes": []}, "/scopes"),
        ({"plan": "gold"}, "/plan"),
        ({"name": "  "}, "/name"),
        ({"name": "a\nb"}, "/name"),
        ({"api_version": "1999-01-01"}, "/api_version"),
    ],
)
async def test_a_create_is_refused_field_by_field(
    world: World, changes: dict[str, object], field: str
) -> None:
    admin = await world.admin_principal()
    request: dict[str, object] = {"name": "ok", "scopes": ["profiles:read"], **changes}
    with pytest.raises(ValidationFailed) as refused:
        await world.admin.create(admin, **request)  # type: ignore[arg-type]
    assert [e.field for e in refused.value.errors] == [field]


async def test_an_expiry_must_be_in_the_future_and_carry_an_offset(world: World) -> None:
    admin = await world.admin_principal()
    now = world.clock.now()
    for when in (now - timedelta(seconds=1), now.replace(tzinfo=None) + timedelta(days=1)):
        with pytest.raises(ValidationFailed):
            await world.admin.create(admin, name="x", scopes=["profiles:read"], expires_at=when)


async def test_a_scope_taken_away_applies_at_once_in_this_process(world: World) -> None:
    admin = await world.admin_principal()
    issued = await world.admin.create(admin, name="writer", scopes=["profiles:read", "profiles:write"])
    assert (await world.authenticator.authenticate(issued.token)).can(Scope.PROFILES_WRITE)  # now cached
    await world.admin.update(admin, issued.key.id, scopes=["profiles:read"])
    assert world.changed == [issued.key.id]
    assert not (await world.authenticator.authenticate(issued.token)).can(Scope.PROFILES_WRITE)
    [latest, _] = await world.admin.audit(admin, limit=10)
    assert latest.action == "key.updated"
    assert latest.detail == {"scopes": ["profiles:read"]}


async def test_an_update_that_changes_nothing_records_nothing(world: World) -> None:
    admin = await world.admin_principal()
    issued = await world.admin.create(admin, name="same", scopes=["profiles:read"])
    await world.admin.update(admin, issued.key.id, name="same")
    assert world.changed == []
    assert [e.action for e in await world.admin.audit(admin, limit=10)] == ["key.created"]


async def test_a_rotated_out_secret_works_until_the_time_set_then_never(world: World) -> None:
    admin = await world.admin_principal()
    old = await world.admin.create(admin, name="rotating", scopes=["profiles:read"])
    await world.authenticator.authenticate(old.token)  # cached for an hour
    new = await world.admin.rotate(admin, old.key.id, previous_valid_for=timedelta(minutes=10))
    assert new.token != old.token
    assert (await world.authenticator.authenticate(old.token)).key_id == old.key.id
    assert (await world.authenticator.authenticate(new.token)).key_id == old.key.id
    world.clock.advance(timedelta(minutes=10))
    with pytest.raises(Unauthenticated):
        await world.authenticator.authenticate(old.token)  # the cache did not keep it on
    assert (await world.authenticator.authenticate(new.token)).key_id == old.key.id
    # A second rotation with no grace: the secret it replaces stops at once.
    newer = await world.admin.rotate(admin, old.key.id, previous_valid_for=timedelta(0))
    with pytest.raises(Unauthenticated):
        await world.authenticator.authenticate(new.token)
    assert (await world.authenticator.authenticate(newer.token)).key_id == old.key.id


async def test_a_second_rotation_ends_the_first_ones_grace(world: World) -> None:
    admin = await world.admin_principal()
    first = await world.admin.create(admin, name="r", scopes=["profiles:read"])
    second = await world.admin.rotate(admin, first.key.id, previous_valid_for=timedelta(hours=1))
    await world.admin.rotate(admin, first.key.id, previous_valid_for=timedelta(hours=1))
    with pytest.raises(Unauthenticated):
        await world.authenticator.authenticate(first.token)
    assert (await world.authenticator.authenticate(second.token)).key_id == first.key.id


async def test_an_expiry_ends_the_key_at_its_time_even_when_cached(world: World) -> None:
    admin = await world.admin_principal()
    issued = await world.admin.create(admin, name="temp", scopes=["profiles:read"])
    await world.authenticator.authenticate(issued.token)
    await world.admin.expire(admin, issued.key.id, at=world.clock.now() + timedelta(minutes=5))
    assert (await world.authenticator.authenticate(issued.token)).valid_until is not None
    world.clock.advance(timedelta(minutes=5))
    with pytest.raises(Unauthenticated):
        await world.authenticator.authenticate(issued.token)
    with pytest.raises(NotFound):  # an expired key can no longer be changed
        await world.admin.update(admin, issued.key.id, name="again")


async def test_expired_now_and_revoked_keys_stop_at_once(world: World) -> None:
    admin = await world.admin_principal()
    ended = await world.admin.create(admin, name="ended", scopes=["profiles:read"])
    revoked = await world.admin.create(admin, name="revoked", scopes=["profiles:read"])
    for issued in (ended, revoked):
        await world.authenticator.authenticate(issued.token)
    await world.admin.expire(admin, ended.key.id)
    await world.admin.revoke(admin, revoked.key.id)
    await world.admin.revoke(admin, revoked.key.id)  # again: nothing changes, nothing recorded
    for issued in (ended, revoked):
        with pytest.raises(Unauthenticated):
            await world.authenticator.authenticate(issued.token)
    actions = [e.action for e in await world.admin.audit(admin, limit=10)]
    assert actions == ["key.revoked", "key.expired", "key.created", "key.created"]
    with pytest.raises(NotFound):
        await world.admin.revoke(admin, "z" * 16)


async def test_the_audit_log_pages_and_filters_by_key(world: World) -> None:
    admin = await world.admin_principal()
    keys = [await world.admin.create(admin, name=f"k{n}", scopes=["profiles:read"]) for n in range(3)]
    await world.admin.update(admin, keys[0].key.id, name="renamed")
    page = await world.admin.audit(admin, limit=2)
    assert [e.action for e in page] == ["key.updated", "key.created"]
    rest = await world.admin.audit(admin, limit=10, before=page[-1].seq)
    assert [e.subject for e in rest] == [keys[1].key.id, keys[0].key.id]
    of_first = await world.admin.audit(admin, limit=10, key_id=keys[0].key.id)
    assert [e.action for e in of_first] == ["key.updated", "key.created"]
    with pytest.raises(ValidationFailed):
        await world.admin.audit(admin, limit=0)


async def test_an_edge_key_may_be_ended_here_but_not_changed_or_rotated(world: World) -> None:
    """An admin key must not take over an edge key (which acts as any caller): no new secret, no
    new scopes; ending it (expiry, revocation) takes nothing over."""
    admin = await world.admin_principal()
    edge = await issue_api_key(
        world.store, world.clock, scopes=[Scope.EDGE], api_version=VERSION, name="edge"
    )
    with pytest.raises(Forbidden):
        await world.admin.rotate(admin, edge.key.id, previous_valid_for=timedelta(0))
    with pytest.raises(Forbidden):
        await world.admin.update(admin, edge.key.id, scopes=["admin"])
    assert (await world.authenticator.authenticate(edge.token)).scopes == frozenset({Scope.EDGE})
    await world.admin.expire(admin, edge.key.id, at=world.clock.now() + timedelta(days=1))
    await world.admin.revoke(admin, edge.key.id)
    with pytest.raises(Unauthenticated):
        await world.authenticator.authenticate(edge.token)


async def test_no_key_may_be_given_the_edge_plan_here(world: World) -> None:
    admin = await world.admin_principal()
    world.admin = ApiKeyAdmin(
        world.store,
        world.clock,
        plans=["standard", "edge"],
        default_plan="standard",
        api_versions=[VERSION],
        newest_version=VERSION,
        on_changed=lambda key_id: _done(),
    )
    with pytest.raises(ValidationFailed):
        await world.admin.create(admin, name="fast", scopes=["profiles:read"], plan="edge")
    issued = await world.admin.create(admin, name="normal", scopes=["profiles:read"])
    with pytest.raises(ValidationFailed):
        await world.admin.update(admin, issued.key.id, plan="edge")


async def _done() -> None:
    return None


async def test_a_rotated_out_secret_may_not_manage_keys(world: World) -> None:
    """Rotating its own key with the secret being replaced, a leaked secret would take the key
    over; during its grace it still reads, but manages nothing."""
    issued = await world.admin.create(await world.admin_principal(), name="ops2", scopes=["admin"])
    await world.admin.rotate(
        await world.authenticator.authenticate(issued.token),
        issued.key.id,
        previous_valid_for=timedelta(hours=1),
    )
    old = await world.authenticator.authenticate(issued.token)
    assert old.via_previous_secret
    for attempt in (
        world.admin.rotate(old, issued.key.id, previous_valid_for=timedelta(days=30)),
        world.admin.create(old, name="backdoor", scopes=["admin"]),
        world.admin.list_keys(old),
    ):
        with pytest.raises(Forbidden):
            await attempt


async def test_times_and_pages_out_of_range_are_refused_not_failed(world: World) -> None:
    admin = await world.admin_principal()
    issued = await world.admin.create(admin, name="k", scopes=["profiles:read"])
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))  # past 9999 in UTC
    for when in (far, world.clock.now() + timedelta(days=3651)):
        with pytest.raises(ValidationFailed):
            await world.admin.expire(admin, issued.key.id, at=when)
        with pytest.raises(ValidationFailed):
            await world.admin.create(admin, name="x", scopes=["profiles:read"], expires_at=when)
    for before in (0, 2**31, 2**63):
        with pytest.raises(ValidationFailed):
            await world.admin.audit(admin, limit=10, before=before)
    with pytest.raises(ValidationFailed):
        await world.admin.update(admin, issued.key.id)  # nothing to change


async def test_every_admin_action_is_published_as_it_is_audited(world: World) -> None:
    admin = await world.admin_principal()
    key = (await world.admin.create(admin, name="k", scopes=["profiles:read"])).key.id
    await world.admin.update(admin, key, name="renamed")
    await world.admin.rotate(admin, key, previous_valid_for=timedelta(minutes=5))
    await world.admin.expire(admin, key, at=world.clock.now() + timedelta(days=1))
    await world.admin.revoke(admin, key)
    audited = [
        (e.actor, e.action, e.subject, e.detail) for e in reversed(await world.admin.audit(admin, limit=10))
    ]
    published = [
        (r.event.data["actor"], r.event.data["action"], r.event.subject, r.event.data["detail"])
        for r in world.store.tables.events
        if r.event.type == ADMIN_ACTION
    ]
    assert [action for _, action, _, _ in audited] == [
        "key.created",
        "key.updated",
        "key.rotated",
        "key.expired",
        "key.revoked",
    ]
    assert published == audited
