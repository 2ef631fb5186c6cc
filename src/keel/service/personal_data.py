"""The personal-data lifecycle's use cases: export everything Keel holds about a profile, start
an erasure and read its status (the saga itself: `keel.service.erasure`), and purge profiles
soft-deleted longer than the retention period down to tombstones (housekeeping)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from keel.domain.api_keys import Principal
from keel.domain.erasure import Erasure, ErasureState, TombstoneCause, is_erasure_id, new_erasure_id
from keel.domain.errors import NotFound
from keel.domain.events import profile_data
from keel.domain.ids import is_profile_id
from keel.domain.profile import JSONObject, JSONValue
from keel.service.erasure import ErasurePolicy, ErasureStatus, erasure_status, require_admin
from keel.service.outbox import cloud_event
from keel.service.ports import Clock, PersonalDataStore
from keel.service.residency import ensure_here

DEFAULT_DELETED_RETENTION = timedelta(days=30)
_PURGE_BATCH = 100
EXPORT_FORMAT = "keel.profile-export.v1"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment is not None else None


def _nothing() -> None:
    return None


class PersonalDataService:
    def __init__(
        self,
        store: PersonalDataStore,
        clock: Clock,
        region: str,
        *,
        erasure_policy: ErasurePolicy | None = None,
        deleted_retention: timedelta = DEFAULT_DELETED_RETENTION,
        on_erasure_started: Callable[[], None] = _nothing,
    ) -> None:
        self._store = store
        self._region = region  # the profiles held here: others are refused (`ensure_here`)
        self._clock = clock
        self._policy = erasure_policy or ErasurePolicy()
        self._deleted_retention = deleted_retention
        self._on_erasure_started = on_erasure_started  # wakes this process's saga runner

    async def export_profile(self, principal: Principal, profile_id: str) -> JSONObject:
        """Everything Keel holds about the profile, as one JSON document: the profile (also
        soft-deleted; private attributes included), its events as stored in the outbox, the
        metadata of the idempotency records that hold it (never the stored response: that is
        the profile again), the webhook deliveries of its events (to whom they went, dead
        letters included), and, once erased or purged, its tombstone and erasure status.
        `NotFound` when Keel holds nothing about it."""
        require_admin(principal)
        if not is_profile_id(profile_id):
            raise NotFound("No such profile.")
        ensure_here((profile_id,), self._region)
        async with self._store.unit_of_work(read_only=True) as uow:
            data = uow.personal_data
            profile = await data.profile_any_state(profile_id)
            tombstone = await data.tombstone(profile_id)
            if profile is None and tombstone is None:
                raise NotFound("No such profile.")
            events = await data.events_of(profile_id)
            records = await data.idempotency_records_of(profile_id)
            disclosed = await data.deliveries_of(profile_id)
            link = await uow.subjects.subject_of(profile_id)
            erasure = await uow.erasures.of_profile(profile_id)
            status = await erasure_status(uow, erasure) if erasure is not None else None
        profile_json: JSONObject | None = None
        if profile is not None:
            profile_json = {
                **profile_data(profile),
                "deleted_at": profile.deleted_at.isoformat(timespec="microseconds")
                if profile.deleted_at is not None
                else None,
            }
        exported_events: list[JSONValue] = [
            {
                **cloud_event(record),
                "published_at": record.published_at.isoformat(timespec="microseconds")
                if record.published_at is not None
                else None,
            }
            for record in events
        ]
        exported_records: list[JSONValue] = [
            {
                "scope": record.scope,
                "key": record.key,
                "state": record.state.value,
                "expires_at": record.expires_at.isoformat(timespec="microseconds"),
            }
            for record in records
        ]
        linked: JSONObject = {}
        if link is not None:
            # The end user (an OpenID Connect subject) who may read and change the profile: only
            # when there is one, so that an export without one is what it was before links.
            linked["end_user"] = {
                "issuer": link[0].issuer,
                "subject": link[0].subject,
                "linked_at": link[1].isoformat(timespec="microseconds"),
            }
        return {
            "format": EXPORT_FORMAT,
            **linked,
            "profile_id": profile_id,
            "exported_at": self._clock.now().isoformat(timespec="microseconds"),
            "profile": profile_json,
            "tombstone": {
                "removed_at": tombstone.removed_at.isoformat(timespec="microseconds"),
                "cause": tombstone.cause.value,
            }
            if tombstone is not None
            else None,
            "erasure": status.document() if status is not None else None,
            "events": exported_events,
            "idempotency_records": exported_records,
            # To whom Keel sent the profile's events: every webhook delivery of them, dead
            # letters included (the payloads are the events above).
            "webhook_deliveries": [
                {
                    "endpoint_id": d.endpoint_id,
                    "endpoint_url": d.endpoint_url,
                    "event_id": d.event_id,
                    "event_type": d.event_type,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_attempt_at": _iso(d.last_attempt_at),
                    "finished_at": _iso(d.finished_at),
                }
                for d in disclosed
            ],
        }

    async def start_erasure(self, principal: Principal, profile_id: str) -> ErasureStatus:
        """Start erasing the profile (soft-deleted ones too) and return the saga's status at
        once; the saga runs in the background. Asking again returns the same saga; asking again
        after it FAILED runs it again from where it stopped. `NotFound` when Keel never held
        the profile."""
        require_admin(principal)
        if not is_profile_id(profile_id):
            raise NotFound("No such profile.")
        ensure_here((profile_id,), self._region)
        now = self._clock.now()
        async with self._store.unit_of_work() as uow:
            existing = await uow.erasures.of_profile(profile_id)
            if existing is None:
                held = await uow.personal_data.profile_any_state(profile_id) is not None
                if not held and await uow.personal_data.tombstone(profile_id) is None:
                    raise NotFound("No such profile.")
                # Not added (False) only when a concurrent request added it: the same saga.
                await uow.erasures.add(
                    Erasure(
                        id=new_erasure_id(),
                        profile_id=profile_id,
                        requested_by=principal.key_id,
                        requested_at=now,
                        give_up_at=now + self._policy.give_up_after,
                        state=ErasureState.RUNNING,
                        next_attempt_at=now,
                    )
                )
            elif existing.state is ErasureState.FAILED:
                await uow.erasures.restart(existing.id, now, now + self._policy.give_up_after)
            await uow.commit()
        self._on_erasure_started()
        async with self._store.unit_of_work(read_only=True) as uow:
            erasure = await uow.erasures.of_profile(profile_id)
            assert erasure is not None  # committed above, never deleted
            return await erasure_status(uow, erasure)

    async def erasure_status(self, principal: Principal, erasure_id: str) -> ErasureStatus:
        require_admin(principal)
        if not is_erasure_id(erasure_id):
            # Names no erasure; the database is not asked (it could refuse the text outright).
            raise NotFound("No such erasure.")
        async with self._store.unit_of_work(read_only=True) as uow:
            erasure = await uow.erasures.get(erasure_id)
            if erasure is None:
                raise NotFound("No such erasure.")
            return await erasure_status(uow, erasure)

    async def purge_deleted_profiles(self) -> int:
        """Remove the personal data of profiles soft-deleted more than the retention period ago,
        down to tombstones; returns how many. Each batch is one transaction."""
        purged = 0
        while True:
            now = self._clock.now()
            async with self._store.unit_of_work() as uow:
                expired = await uow.personal_data.deleted_before(now - self._deleted_retention, _PURGE_BATCH)
                for profile_id in expired:
                    await uow.personal_data.remove(profile_id, now, TombstoneCause.PURGE)
                await uow.commit()
            purged += len(expired)
            if len(expired) < _PURGE_BATCH:
                return purged
