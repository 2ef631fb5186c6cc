"""Background upkeep a core runs for as long as it serves: removing expired idempotency records,
and purging profiles soft-deleted longer than the retention period down to tombstones.

It lives with the use cases rather than in the composition root because what it does (which
records, how a failure is treated) is service behaviour; the root only starts it."""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from keel.service.ports import Clock, Store

IDEMPOTENCY_PURGE_SECONDS = 600.0
DELETED_PROFILES_PURGE_SECONDS = 3600.0


class PurgesIdempotencyRecords(Protocol):
    async def purge_expired_idempotency_records(self) -> int: ...


class IdempotencyRecordsPurge:
    """Forgets idempotency records older than their 24 h, over the store it is given (a core
    gives it the background jobs' store: its own database breaker, see `keel.bootstrap.core`)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def purge_expired_idempotency_records(self) -> int:
        """Returns how many were removed."""
        async with self._store.unit_of_work() as uow:
            removed = await uow.idempotency.purge_expired(self._clock.now())
            await uow.commit()
        return removed


async def purge_idempotency_records(
    service: PurgesIdempotencyRecords, every_seconds: float = IDEMPOTENCY_PURGE_SECONDS
) -> None:
    """Idempotency records live 24 h; expired ones are removed every `every_seconds`, until
    cancelled. A failed pass is logged and the next one tried: housekeeping must outlive a
    database hiccup."""
    log = structlog.get_logger("keel.housekeeping")
    while True:
        try:
            removed = await service.purge_expired_idempotency_records()
            if removed:
                log.info("idempotency_records_purged", count=removed)
        except Exception as error:  # noqa: BLE001 - housekeeping must outlive a database hiccup
            log.warning("idempotency_purge_failed", error=type(error).__name__)
        await asyncio.sleep(every_seconds)


class PurgesDeletedProfiles(Protocol):
    async def purge_deleted_profiles(self) -> int: ...


async def purge_deleted_profiles(
    service: PurgesDeletedProfiles, every_seconds: float = DELETED_PROFILES_PURGE_SECONDS
) -> None:
    """Profiles soft-deleted longer than the retention period are purged to tombstones every
    `every_seconds`, until cancelled; a failed pass is logged and the next one tried."""
    log = structlog.get_logger("keel.housekeeping")
    while True:
        try:
            purged = await service.purge_deleted_profiles()
            if purged:
                log.info("deleted_profiles_purged", count=purged)
        except Exception as error:  # noqa: BLE001 - housekeeping must outlive a database hiccup
            log.warning("deleted_profiles_purge_failed", error=type(error).__name__)
        await asyncio.sleep(every_seconds)
