"""API keys managed by admin keys, the same for every protocol that offers it: create (the
secret shown once), list, read, change name, scopes or plan, rotate (a new secret, the old one
accepted until an expiry the caller sets), expire, revoke; and the audit log of these actions.

Every action needs an admin key, is recorded in the audit log in its own transaction (who,
what, when; never a secret), and, when it changes what an existing key may do, is told to every
process (`on_changed`: this process's cache at once, the others through the revocation push),
so that no process keeps accepting what the key no longer may.

An API key may not be given the `edge` scope or the edge plan here, and an edge key may not be
changed or rotated here (only ended: expired or revoked): an edge key acts as any caller it
names, more than admin may, so an admin key must not be able to mint one or take one over.
Edge keys are managed with the CLI. Nor may a caller authenticated by a rotated-out secret
(still accepted during its grace) manage keys: rotating its own key, it would take it over.

Every change reads the key for update (locked until the change commits), so that two admins
acting at once, or a revocation from the CLI, never undo each other.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta

from keel.domain.api_keys import ApiKey, AuditEntry, Principal, Scope
from keel.domain.errors import FieldError, Forbidden, NotFound, ValidationFailed
from keel.domain.events import api_key_revoked
from keel.ratelimit.policy import EDGE_PLAN
from keel.service.admin_actions import record_admin_action
from keel.service.auth import IssuedKey, issue_api_key, new_secret
from keel.service.ports import Clock, Store

MAX_NAME_LENGTH = 100
# The longest a rotated-out secret may stay accepted, and the furthest expiry: long enough for
# any deployment's rollout, short enough that a leaked old secret does not live on for ever.
MAX_PREVIOUS_SECRET_LIFETIME = timedelta(days=30)
# The furthest expiry a key may be given.
MAX_KEY_LIFETIME = timedelta(days=3650)
MAX_AUDIT_PAGE = 500
MAX_AUDIT_SEQ = 2**31 - 1  # `admin_audit.seq` is a 32-bit integer on PostgreSQL
GRANTABLE_SCOPES = frozenset(Scope) - {Scope.EDGE}
_KEY_ID = re.compile(r"[a-z2-7]{16}")


class ApiKeyAdmin:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        plans: Collection[str],
        default_plan: str,
        api_versions: Collection[str],
        newest_version: str,
        on_changed: Callable[[str], Awaitable[None]],
        event_source: str = "/keel",
    ) -> None:
        self._store = store
        self._clock = clock
        self._plans = [plan for plan in plans if plan != EDGE_PLAN]
        self._default_plan = default_plan
        self._versions = api_versions
        self._newest = newest_version
        self._on_changed = on_changed
        self._source = event_source

    def now(self) -> datetime:
        """The time a key's state is judged at (its clock)."""
        return self._clock.now()

    # ------------------------------------------------------------------------------ reads

    async def list_keys(self, caller: Principal) -> list[ApiKey]:
        ensure_admin(caller)
        async with self._store.unit_of_work(read_only=True) as uow:
            return await uow.api_keys.list_all()

    async def get_key(self, caller: Principal, key_id: str) -> ApiKey:
        ensure_admin(caller)
        async with self._store.unit_of_work(read_only=True) as uow:
            return _found(await uow.api_keys.get(_key_id(key_id)), key_id)

    async def audit(
        self, caller: Principal, *, limit: int, before: int | None = None, key_id: str | None = None
    ) -> list[AuditEntry]:
        """Newest first; `before`: the `seq` of the last entry of the previous page."""
        ensure_admin(caller)
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise ValidationFailed([FieldError("/limit", f"must be 1 to {MAX_AUDIT_PAGE}")])
        if before is not None and not 1 <= before <= MAX_AUDIT_SEQ:
            raise ValidationFailed([FieldError("/before", f"must be 1 to {MAX_AUDIT_SEQ}")])
        if key_id is not None and not _KEY_ID.fullmatch(key_id):
            raise ValidationFailed([FieldError("/key_id", "an API key id: 16 of a-z and 2-7")])
        async with self._store.unit_of_work(read_only=True) as uow:
            return await uow.audit.entries(limit=limit, before=before, subject=key_id)

    # ------------------------------------------------------------------------------ changes

    async def create(
        self,
        caller: Principal,
        *,
        name: str,
        scopes: Iterable[str],
        plan: str | None = None,
        api_version: str | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        ensure_admin(caller)
        now = self._clock.now()
        granted = self._scopes(scopes)
        chosen_plan = self._plan(plan if plan is not None else self._default_plan)
        version = api_version if api_version is not None else self._newest
        errors = _name_errors(name)
        if version not in self._versions:
            errors.append(FieldError("/api_version", f"must be one of {', '.join(sorted(self._versions))}"))
        errors += _expiry_errors(expires_at, now, "/expires_at")
        if errors:
            raise ValidationFailed(errors)
        return await issue_api_key(
            self._store,
            self._clock,
            scopes=granted,
            api_version=version,
            name=name,
            plan=chosen_plan,
            expires_at=expires_at,
            event_source=self._source,
            audit=lambda key: created_entry(now, caller.key_id, key),
        )

    async def update(
        self,
        caller: Principal,
        key_id: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] | None = None,
        plan: str | None = None,
    ) -> ApiKey:
        """Change what is given; the rest stays."""
        ensure_admin(caller)
        if name is None and scopes is None and plan is None:
            raise ValidationFailed([FieldError("", "nothing to change: give name, scopes or plan")])
        changes: dict[str, object] = {}
        if name is not None:
            errors = _name_errors(name)
            if errors:
                raise ValidationFailed(errors)
            changes["name"] = name
        if scopes is not None:
            changes["scopes"] = self._scopes(scopes)
        if plan is not None:
            changes["plan"] = self._plan(plan)
        now = self._clock.now()
        async with self._store.unit_of_work() as uow:
            key = _changeable(await uow.api_keys.get_for_update(_key_id(key_id)), key_id, now)
            updated = dataclasses.replace(key, **changes)  # type: ignore[arg-type]
            changed = {
                field: _shown(getattr(updated, field))
                for field in changes
                if getattr(updated, field) != getattr(key, field)
            }
            if changed:
                await uow.api_keys.update(updated)
                await record_admin_action(
                    uow, _entry(now, caller, "key.updated", key_id, **changed), self._source
                )
                await uow.commit()
        if changed:
            await self._on_changed(key_id)
        return updated

    async def rotate(self, caller: Principal, key_id: str, *, previous_valid_for: timedelta) -> IssuedKey:
        """A new secret; the current one stays accepted for `previous_valid_for` (zero: no
        longer), and a secret an earlier rotation left accepted stops at once."""
        ensure_admin(caller)
        if not timedelta(0) <= previous_valid_for <= MAX_PREVIOUS_SECRET_LIFETIME:
            raise ValidationFailed(
                [
                    FieldError(
                        "/previous_secret_valid_seconds",
                        f"must be 0 to {int(MAX_PREVIOUS_SECRET_LIFETIME.total_seconds())}",
                    )
                ]
            )
        now = self._clock.now()
        token, verifier = new_secret(key_id)
        previous_until = now + previous_valid_for if previous_valid_for else None
        async with self._store.unit_of_work() as uow:
            key = _changeable(await uow.api_keys.get_for_update(_key_id(key_id)), key_id, now)
            rotated = dataclasses.replace(
                key,
                secret_hash=verifier,
                previous_secret_hash=key.secret_hash if previous_until is not None else None,
                previous_expires_at=previous_until,
            )
            await uow.api_keys.update(rotated)
            entry = _entry(
                now, caller, "key.rotated", key_id, previous_secret_valid_until=_time(previous_until)
            )
            await record_admin_action(uow, entry, self._source)
            await uow.commit()
        await self._on_changed(key_id)
        return IssuedKey(key=rotated, token=token)

    async def expire(self, caller: Principal, key_id: str, *, at: datetime | None = None) -> ApiKey:
        """The key stops working at `at` (None: now); an expiry already set is replaced."""
        ensure_admin(caller)
        now = self._clock.now()
        when = now if at is None else at
        if at is not None:
            errors = _expiry_errors(at, now, "/at")
            if errors:
                raise ValidationFailed(errors)
        async with self._store.unit_of_work() as uow:
            key = _live(await uow.api_keys.get_for_update(_key_id(key_id)), key_id, now)
            expired = dataclasses.replace(key, expires_at=when)
            await uow.api_keys.update(expired)
            entry = _entry(now, caller, "key.expired", key_id, expires_at=_time(when))
            await record_admin_action(uow, entry, self._source)
            await uow.commit()
        await self._on_changed(key_id)
        return expired

    async def revoke(self, caller: Principal, key_id: str) -> ApiKey:
        ensure_admin(caller)
        now = self._clock.now()
        async with self._store.unit_of_work() as uow:
            key = _found(await uow.api_keys.get_for_update(_key_id(key_id)), key_id)
            if key.revoked_at is not None:
                return key  # revoking again changes nothing
            revoked = dataclasses.replace(key, revoked_at=now)
            await uow.api_keys.revoke(key_id, now)
            await uow.outbox.add(api_key_revoked(key_id, now), self._source)
            await record_admin_action(uow, revoked_entry(now, caller.key_id, key_id), self._source)
            await uow.commit()
        await self._on_changed(key_id)
        return revoked

    # ------------------------------------------------------------------------------ rules

    def _scopes(self, names: Iterable[str]) -> frozenset[Scope]:
        granted: set[Scope] = set()
        for name in names:
            try:
                scope = Scope(name)
            except ValueError:
                scope = None
            if scope not in GRANTABLE_SCOPES or scope is None:
                allowed = ", ".join(sorted(GRANTABLE_SCOPES))
                raise ValidationFailed(
                    [
                        FieldError(
                            "/scopes", f"{name!r} is not a scope an API key may be given here ({allowed})"
                        )
                    ]
                )
            granted.add(scope)
        if not granted:
            raise ValidationFailed([FieldError("/scopes", "at least one scope")])
        return frozenset(granted)

    def _plan(self, plan: str) -> str:
        if plan not in self._plans:
            raise ValidationFailed([FieldError("/plan", f"must be one of {', '.join(sorted(self._plans))}")])
        return plan


def ensure_admin(caller: Principal) -> None:
    """Refused unless an admin key's current secret: what every action here checks first."""
    if not caller.is_admin:
        raise Forbidden("Only admin keys may manage API keys.")
    if caller.via_previous_secret:
        raise Forbidden("A rotated-out secret may not manage API keys: use the key's current secret.")


def _key_id(key_id: str) -> str:
    """An API key id as issued (16 of a-z and 2-7); anything else names no key, and is not
    looked up (a NUL byte is not even valid text for PostgreSQL)."""
    if not _KEY_ID.fullmatch(key_id):
        raise NotFound(f"No API key {key_id[:32]!r}.")
    return key_id


def _found(key: ApiKey | None, key_id: str) -> ApiKey:
    if key is None:
        raise NotFound(f"No API key {key_id!r}.")
    return key


def _live(key: ApiKey | None, key_id: str, now: datetime) -> ApiKey:
    """A key that may still be changed: not revoked, not expired."""
    found = _found(key, key_id)
    if not found.usable_at(now):
        raise NotFound(f"API key {key_id!r} is revoked or expired: it can no longer be changed.")
    return found


def _changeable(key: ApiKey | None, key_id: str, now: datetime) -> ApiKey:
    """A live key whose scopes and secret may be changed here: not an edge key."""
    live = _live(key, key_id, now)
    if Scope.EDGE in live.scopes:
        raise Forbidden(
            "An edge key is changed and rotated with the CLI only; it may be expired or revoked here."
        )
    return live


def _name_errors(name: str) -> list[FieldError]:
    if not name.strip() or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        return [FieldError("/name", f"1 to {MAX_NAME_LENGTH} printable characters, not only spaces")]
    return []


def _expiry_errors(at: datetime | None, now: datetime, location: str) -> list[FieldError]:
    if at is None:
        return []
    if at.tzinfo is None:
        return [FieldError(location, "must carry a time zone offset")]
    try:
        in_utc = at.astimezone(UTC)
    except (OverflowError, ValueError):  # past year 9999 once in UTC
        in_utc = None
    if in_utc is None or in_utc > now + MAX_KEY_LIFETIME:
        return [FieldError(location, f"must be within {MAX_KEY_LIFETIME.days} days from now")]
    if in_utc <= now:
        return [FieldError(location, "must be in the future (to end a key now, expire it without a time)")]
    return []


# The actor of what an operator does with `keel keys` on a host (no key made the request).
CLI_ACTOR = "cli"


def created_entry(at: datetime, actor: str, key: ApiKey) -> AuditEntry:
    """The audit entry of a key's creation, by an admin key (`actor`, its id) or `CLI_ACTOR`."""
    return AuditEntry(
        at=at,
        actor=actor,
        action="key.created",
        subject=key.id,
        detail={
            "name": key.name,
            "scopes": sorted(key.scopes),
            "plan": key.plan,
            "api_version": key.api_version,
            "expires_at": _time(key.expires_at),
        },
    )


def revoked_entry(at: datetime, actor: str, key_id: str) -> AuditEntry:
    return AuditEntry(at=at, actor=actor, action="key.revoked", subject=key_id, detail={})


def _entry(at: datetime, caller: Principal, action: str, subject: str, **detail: object) -> AuditEntry:
    return AuditEntry(at=at, actor=caller.key_id, action=action, subject=subject, detail=detail)


def _shown(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value is not None else None
