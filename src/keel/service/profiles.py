"""The profile use cases. Every protocol (REST today, GraphQL and gRPC later) calls these and
nothing else, so the rules below hold whatever the wire format."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import timedelta

from keel.domain.api_keys import Principal, Scope
from keel.domain.erasure import is_erased_outcome
from keel.domain.errors import (
    ConcurrentModification,
    FieldError,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    KeelError,
    NotFound,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
)
from keel.domain.events import profile_changed
from keel.domain.ids import is_profile_id, new_profile_id
from keel.domain.merge_patch import apply_merge_patch
from keel.domain.profile import HANDLE_PATTERN, HANDLE_RULE, JSONValue, Profile, ProfileFields
from keel.resilience.deadline import detached_deadline
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy
from keel.service.attributes import AttributePolicy
from keel.service.auth import require
from keel.service.pagination import Cursors
from keel.service.ports import (
    Clock,
    IdempotencyRecord,
    IdempotencyState,
    ProfileQuery,
    Store,
    UnitOfWork,
)
from keel.service.profile_input import email_search_key, fields_document, parse_profile_fields
from keel.service.profile_reads import ProfileRead, ProfileReads
from keel.service.residency import create_here, ensure_here
from keel.service.snapshots import profile_from_snapshot, profile_snapshot
from keel.service.use_cases import (
    MAX_IDS_PER_BATCH,
    MAX_IDS_PER_QUERY,
    MAX_PAGE_SIZE,
    Created,
    ExpectedVersion,
    ListFilters,
    ProfilePage,
)

IDEMPOTENCY_TTL = timedelta(hours=24)
DEFAULT_EVENT_SOURCE = "/keel"  # the CloudEvents `source` of events this Keel records
# Longer than any request may run (every database call is bounded by the request's deadline): a
# reservation older than this belongs to a request that died before committing, so (since its
# outcome commits with the write) nothing was written.
IDEMPOTENCY_LEASE = timedelta(seconds=60)
# Time given to forget a reservation after its request failed, off the request's path.
_RELEASE_TIMEOUT_SECONDS = 5.0
_WRITE_ATTEMPTS = 3


class ProfileService:
    """Use cases over profiles. Returned profiles are already cut to what the caller may see."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: AttributePolicy,
        region: str,
        *,
        reads: ProfileReads | None = None,
        idempotency_lease: timedelta = IDEMPOTENCY_LEASE,
        cursors: Cursors | None = None,
        event_source: str = DEFAULT_EVENT_SOURCE,
        on_events_committed: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._region = region
        self._reads = reads or ProfileReads(store, RetryPolicy(RetryBudget(), Backoff()))
        self._lease = idempotency_lease
        self._cursors = cursors or Cursors()
        self._background: set[asyncio.Task[None]] = set()
        self._event_source = event_source
        # Wakes the outbox relay of this process at once, instead of at its next poll.
        self._on_events_committed = on_events_committed or _nothing

    async def get_profile(self, principal: Principal, profile_id: str) -> Profile:
        return (await self.read_profile(principal, profile_id)).profile

    async def read_profile(self, principal: Principal, profile_id: str) -> ProfileRead:
        """The profile with how old the copy is: `stale` when the database is unavailable and a
        cached copy is served instead of an error."""
        require(principal, Scope.PROFILES_READ)
        if not is_profile_id(profile_id):
            raise NotFound("No such profile.")
        ensure_here((profile_id,), self._region)
        read = await self._reads.read(profile_id)
        if read is None:
            raise NotFound("No such profile.")
        visible = self._visible(read.profile, principal)
        return read if visible is read.profile else replace(read, profile=visible)

    async def get_profiles(self, principal: Principal, profile_ids: Sequence[str]) -> dict[str, Profile]:
        require(principal, Scope.PROFILES_READ)
        if not 1 <= len(profile_ids) <= MAX_IDS_PER_BATCH:
            raise ValidationFailed([FieldError("/ids", f"between 1 and {MAX_IDS_PER_BATCH} ids")])
        wanted = list(dict.fromkeys(i for i in profile_ids if is_profile_id(i)))
        if not wanted:
            return {}
        ensure_here(wanted, self._region)
        found = await self._reads.read_many(wanted)
        return {profile_id: self._visible(read.profile, principal) for profile_id, read in found.items()}

    async def handle_available(self, principal: Principal, handle: str) -> bool:
        require(principal, Scope.PROFILES_READ)
        if not HANDLE_PATTERN.match(handle):
            raise ValidationFailed([FieldError("/handle", HANDLE_RULE)])
        async with self._store.unit_of_work(read_only=True, replica_ok=True) as uow:
            holders = await uow.profiles.find(ProfileQuery(limit=1, handle=handle))
        return not holders

    async def list_profiles(
        self, principal: Principal, filters: ListFilters, *, limit: int, cursor: str | None
    ) -> ProfilePage:
        require(principal, Scope.PROFILES_READ)
        errors: list[FieldError] = []
        if not 1 <= limit <= MAX_PAGE_SIZE:
            errors.append(FieldError("/limit", f"must be between 1 and {MAX_PAGE_SIZE}"))
        if filters.ids is not None and not 1 <= len(filters.ids) <= MAX_IDS_PER_QUERY:
            errors.append(FieldError("/ids", f"between 1 and {MAX_IDS_PER_QUERY} ids"))
        if errors:
            raise ValidationFailed(errors)
        normalized = ListFilters(
            handle=filters.handle.strip().lower() if filters.handle else None,
            email=email_search_key(filters.email) if filters.email else None,
            ids=tuple(i for i in filters.ids if is_profile_id(i)) if filters.ids is not None else None,
        )
        if normalized.ids:
            ensure_here(normalized.ids, self._region)
        after_id = self._cursors.decode(cursor, normalized.as_dict()) if cursor else None
        if normalized.ids == ():
            return ProfilePage(profiles=[], next_cursor=None)
        if normalized.ids is not None and normalized.handle is None and normalized.email is None:
            # Only ids: a batch read, through the cache like single reads.
            batch = await self._reads.read_many(list(dict.fromkeys(normalized.ids)))
            found = sorted(
                (read.profile for read in batch.values() if after_id is None or read.profile.id > after_id),
                key=lambda profile: profile.id,
            )[: limit + 1]
        else:
            query = ProfileQuery(
                limit=limit + 1,
                handle=normalized.handle,
                email=normalized.email,
                ids=normalized.ids,
                after_id=after_id,
            )
            async with self._store.unit_of_work(read_only=True, replica_ok=True) as uow:
                found = await uow.profiles.find(query)
        page = found[:limit]
        next_cursor = self._cursors.encode(page[-1].id, normalized.as_dict()) if len(found) > limit else None
        return ProfilePage([self._visible(p, principal) for p in page], next_cursor)

    async def create_profile(
        self, principal: Principal, document: JSONValue, *, idempotency_key: str | None = None
    ) -> Created:
        """Create a profile. With an idempotency key, a repeat of the same request returns the
        first outcome (`replayed=True`) instead of creating a second profile."""
        require(principal, Scope.PROFILES_WRITE)
        fields = parse_profile_fields(create_here(document, self._region), self._policy)
        self._check_private_writes(principal, fields.attributes.keys())
        if idempotency_key is None:
            return Created(await self._insert(fields, None), replayed=False)

        scope = f"{principal.key_id}:create_profile"
        # Fingerprint the normalized fields, not the raw body: equivalent requests match.
        fingerprint = _fingerprint("create_profile", fields_document(fields))
        replay = await self._reserve(scope, idempotency_key, fingerprint)
        if replay is not None:
            return Created(self._visible(profile_from_snapshot(json.loads(replay)), principal), replayed=True)
        try:
            profile = await self._insert(fields, (scope, idempotency_key, fingerprint))
        except KeelError as error:
            if isinstance(error, Unavailable):
                self._release_later(scope, idempotency_key)
            else:
                # A definite refusal (conflict, validation): the key is free again at once.
                await self._release(scope, idempotency_key)
            raise
        except BaseException:
            self._release_later(scope, idempotency_key)
            raise
        return Created(self._visible(profile, principal), replayed=False)

    async def update_profile(
        self,
        principal: Principal,
        profile_id: str,
        patch: JSONValue,
        *,
        expected_version: ExpectedVersion = None,
    ) -> Profile:
        """Apply an RFC 7396 merge patch. With `expected_version`, a profile that has moved on
        is not touched (`VersionMismatch`); without it, concurrent writers are retried."""
        require(principal, Scope.PROFILES_WRITE)
        if not isinstance(patch, dict):
            raise ValidationFailed([FieldError("", "a merge patch must be a JSON object")])
        patched_attributes = patch.get("attributes")
        if isinstance(patched_attributes, dict):
            self._check_private_writes(principal, patched_attributes.keys())
        now = self._clock.now()

        def revise(current: Profile) -> Profile | None:
            fields = self._patched_fields(current.fields, patch, principal)
            return None if fields == current.fields else current.revise(fields, now)

        return self._visible(await self._write(profile_id, expected_version, revise), principal)

    async def delete_profile(
        self, principal: Principal, profile_id: str, *, expected_version: ExpectedVersion = None
    ) -> None:
        require(principal, Scope.PROFILES_WRITE)
        now = self._clock.now()
        await self._write(profile_id, expected_version, lambda current: current.delete(now))

    async def owner_read(self, profile_id: str) -> ProfileRead | None:
        """The live profile, whole, for a use case that has checked its caller owns it
        (`keel.service.end_users`): no scope is asked, nothing is cut."""
        ensure_here((profile_id,), self._region)
        return await self._reads.read(profile_id)

    async def owner_write(
        self, profile_id: str, expected_version: ExpectedVersion, change: Callable[[Profile], Profile | None]
    ) -> Profile:
        """A write of the profile by `change`, as every write is done (events, cache, retries),
        for a use case that has checked its caller owns it; the profile returned is whole."""
        return await self._write(profile_id, expected_version, change)

    # -- helpers ---------------------------------------------------------------------------

    async def _write(
        self,
        profile_id: str,
        expected_version: ExpectedVersion,
        change: Callable[[Profile], Profile | None],
    ) -> Profile:
        """Read, change, write back if nobody wrote in between; `change` returns None for "no
        change". With `expected_version` (If-Match) a lost race is the caller's 412; without
        one, the change is re-applied to the newer profile, a few times at most."""
        ensure_here((profile_id,), self._region)
        for _ in range(_WRITE_ATTEMPTS):
            revised: Profile | None = None
            committed = False
            try:
                async with self._store.unit_of_work() as uow:
                    current = await _live_profile(uow, profile_id)
                    _check_version(current, expected_version)
                    revised = change(current)
                    if revised is None:
                        return current
                    try:
                        await uow.profiles.update(revised, expected_version=current.version)
                    except VersionMismatch:
                        if expected_version is not None:
                            raise
                        continue
                    # Same transaction as the change: an event exists if and only if it does.
                    await uow.outbox.add(profile_changed(revised), self._event_source)
                    await uow.commit()
                    committed = True
                    self._on_events_committed()
                    return revised
            finally:
                if revised is not None:
                    # Also when the commit's outcome is unknown (a timeout): a cached copy of the
                    # version before must not be served as current if the write went through.
                    await self._reads.changed(
                        profile_id,
                        revised.version,
                        revised if committed else None,
                        deleted=revised.is_deleted,
                    )
        raise ConcurrentModification("The profile kept changing while this request ran; retry it.")

    async def _insert(self, fields: ProfileFields, idempotency: tuple[str, str, str] | None) -> Profile:
        profile = Profile.create(new_profile_id(self._region), fields, self._clock.now())
        async with self._store.unit_of_work() as uow:
            await uow.profiles.add(profile)
            await uow.outbox.add(profile_changed(profile), self._event_source)
            if idempotency is not None:
                # Same transaction as the write: an outcome is stored if and only if the write is.
                # A request that outlived its lease finds its reservation taken over, and its
                # write is rolled back rather than stored beside the new owner's.
                scope, key, fingerprint = idempotency
                if not await uow.idempotency.complete(
                    scope, key, fingerprint, json.dumps(profile_snapshot(profile))
                ):
                    raise IdempotencyInProgress("Another request took over this Idempotency-Key.")
            await uow.commit()
        self._on_events_committed()
        return profile

    async def _reserve(self, scope: str, key: str, fingerprint: str) -> str | None:
        """Own the key (None) or return the stored outcome to replay."""
        now = self._clock.now()
        record = IdempotencyRecord(
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            state=IdempotencyState.IN_PROGRESS,
            outcome=None,
            locked_until=now + self._lease,
            expires_at=now + IDEMPOTENCY_TTL,
        )
        async with self._store.unit_of_work() as uow:
            existing = await uow.idempotency.reserve(record, now)
            await uow.commit()
        if existing is None:
            return None
        if existing.outcome is not None and is_erased_outcome(existing.outcome):
            # The profile this request created was erased since: nothing of it is replayed.
            raise NotFound("The profile this request created was erased.")
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used with a different request.")
        if existing.state is IdempotencyState.IN_PROGRESS or existing.outcome is None:
            raise IdempotencyInProgress("A request with this Idempotency-Key is still in progress.")
        return existing.outcome

    def _release_later(self, scope: str, key: str) -> None:
        """Forget a failed request's reservation, off the request's path: the request may have
        failed because its deadline passed, and the caller should not wait for the clean-up."""
        task = asyncio.create_task(self._release(scope, key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, scope: str, key: str) -> None:
        # Best effort: if this fails too, the lease runs out and the key is usable again.
        with detached_deadline(_RELEASE_TIMEOUT_SECONDS):
            try:
                async with self._store.unit_of_work() as uow:
                    await uow.idempotency.release(scope, key)
                    await uow.commit()
            except Exception:  # noqa: BLE001, S110 - the original error is the one worth raising
                pass

    def _patched_fields(
        self, fields: ProfileFields, patch: dict[str, JSONValue], principal: Principal
    ) -> ProfileFields:
        document = fields_document(fields)
        hidden: dict[str, JSONValue] = {}
        if not principal.is_admin and self._policy.private_names:
            attributes = document["attributes"]
            assert isinstance(attributes, dict)
            hidden = {k: v for k, v in attributes.items() if k in self._policy.private_names}
            document["attributes"] = self._policy.visible(attributes, admin=False)
        patched = apply_merge_patch(document, patch)
        if hidden and isinstance(patched, dict):
            # Whatever the patch did to `attributes` (even `null`), what the caller cannot see
            # stays; a non-object left there still fails validation.
            patched_attributes = patched.get("attributes")
            if patched_attributes is None:
                patched["attributes"] = dict(hidden)
            elif isinstance(patched_attributes, dict):
                patched["attributes"] = {**patched_attributes, **hidden}
        unreadable = frozenset(hidden) | (frozenset() if principal.is_admin else self._policy.private_names)
        return parse_profile_fields(patched, self._policy, hidden=unreadable)

    def _check_private_writes(self, principal: Principal, names: Iterable[str]) -> None:
        if principal.is_admin or not self._policy.private_names:
            return
        touched = self._policy.private_names.intersection(names)
        if touched:
            raise Forbidden(f"Only admin keys may set private attributes: {', '.join(sorted(touched))}.")

    def _visible(self, profile: Profile, principal: Principal) -> Profile:
        attributes = profile.fields.attributes
        visible = self._policy.visible(attributes, admin=principal.is_admin)
        if visible is attributes:
            return profile
        return replace(profile, fields=replace(profile.fields, attributes=visible))


def _nothing() -> None:
    return None


async def _live_profile(uow: UnitOfWork, profile_id: str) -> Profile:
    profile = await uow.profiles.get(profile_id) if is_profile_id(profile_id) else None
    if profile is None:
        raise NotFound("No such profile.")
    return profile


def _check_version(profile: Profile, expected_version: ExpectedVersion) -> None:
    if expected_version is None:
        return
    allowed = (expected_version,) if isinstance(expected_version, int) else expected_version
    if profile.version not in allowed:
        raise VersionMismatch(
            f"The profile is at version {profile.version}, not {' or '.join(map(str, sorted(allowed)))}.",
            current_version=profile.version,
        )


def _fingerprint(operation: str, document: JSONValue) -> str:
    canonical = json.dumps([operation, document], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
