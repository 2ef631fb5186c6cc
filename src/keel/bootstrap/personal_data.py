"""The personal-data lifecycle of a core: the export/erasure use cases and the erasure runner."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from keel.config import Settings
from keel.service.erasure import CachedCopiesNotDropped, ErasurePolicy, ErasureSagaRunner
from keel.service.personal_data import PersonalDataService
from keel.service.ports import Clock, EventPublisher, PersonalDataStore
from keel.service.profile_reads import ProfileReads


def erasure_policy(settings: Settings) -> ErasurePolicy:
    return ErasurePolicy(
        give_up_after=timedelta(seconds=settings.erasure_give_up_seconds),
        acknowledgement_poll=timedelta(seconds=settings.erasure_acknowledgement_poll_seconds),
        poll_seconds=settings.erasure_poll_seconds,
        lease=timedelta(seconds=settings.erasure_lease_seconds),
    )


def build_personal_data(
    settings: Settings,
    store: PersonalDataStore,
    clock: Clock,
    reads: ProfileReads,
    events_committed: Callable[[], None],
    stream: EventPublisher | None = None,
    *,
    jobs: PersonalDataStore | None = None,
) -> tuple[PersonalDataService, ErasureSagaRunner, PersonalDataService]:
    """The use cases over `store` (requests); the erasure runner and the deleted profiles' purger
    over `jobs` (default: `store`)."""
    policy = erasure_policy(settings)

    async def drop_cached(profile_id: str, version: int) -> None:
        # Here at once, elsewhere over the invalidation bus (when Redis is configured). A message
        # the bus did not take fails the step, which is retried: another process's copy of the
        # erased profile must not stay until its freshness runs out.
        if not await reads.changed(profile_id, version, None, deleted=True):
            raise CachedCopiesNotDropped(profile_id)

    runner = ErasureSagaRunner(
        jobs or store,
        clock,
        drop_cached,
        stream=stream,  # the relay's: an erasure deletes the stream's copies of the profile's events
        policy=policy,
        event_source=settings.events_source,
        # The relay and the webhook dispatcher: the erased event goes out at once.
        on_events_committed=events_committed,
    )

    def service_over(over: PersonalDataStore) -> PersonalDataService:
        return PersonalDataService(
            over,
            clock,
            settings.region,
            erasure_policy=policy,
            deleted_retention=timedelta(seconds=settings.deleted_profiles_retention_seconds),
            on_erasure_started=runner.wake,
        )

    # The use cases on the requests' store; the purge of deleted profiles, a background job, on
    # the jobs' store.
    return service_over(store), runner, service_over(jobs or store)
