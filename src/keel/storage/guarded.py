"""The database behind a deadline and a circuit breaker, whatever the adapter.

Every unit of work runs under a timeout: the database timeout, cut to what the request has
left (`keel.resilience.deadline`), so no request waits on the database past its deadline. The
breaker counts units of work that failed because of the database (unreachable, timed out)
and, once it opens, refuses new ones at once with `CircuitOpen`: a database that is down or
blackholed costs callers nothing but a 503, and is probed again after `open_seconds`.

Domain outcomes (not found, conflicts, version mismatches) are successes for the breaker: the
database answered.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Self

from keel.domain.errors import CircuitOpen, DeadlineExceeded, Unavailable
from keel.resilience.breaker import CircuitBreaker
from keel.resilience.deadline import call_deadline
from keel.service.ports import (
    ApiKeyRepository,
    AuditLog,
    ErasureAcknowledgements,
    ErasureSagas,
    IdempotencyRecords,
    Outbox,
    PersonalData,
    PersonalDataUnitOfWork,
    ProfileRepository,
    Store,
    SubjectLinks,
    UnitOfWork,
)
from keel.service.webhook_ports import WebhookRepository


class GuardedStore:
    def __init__(self, inner: Store, breaker: CircuitBreaker, *, timeout_seconds: float) -> None:
        self._inner = inner
        self.breaker = breaker
        self._timeout = timeout_seconds

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> GuardedUnitOfWork:
        return GuardedUnitOfWork(
            self._inner.unit_of_work(read_only=read_only, replica_ok=replica_ok), self.breaker, self._timeout
        )

    async def schema_revision(self) -> str | None:
        # Health checks probe the database itself: they must see it come back while the breaker
        # is still open, so they do not go through the breaker.
        async with asyncio.timeout_at(call_deadline(self._timeout)):
            return await self._inner.schema_revision()

    async def close(self) -> None:
        await self._inner.close()


class GuardedUnitOfWork:
    def __init__(self, inner: UnitOfWork, breaker: CircuitBreaker, timeout_seconds: float) -> None:
        self._inner = inner
        self._breaker = breaker
        self._timeout_seconds = timeout_seconds

    @property
    def profiles(self) -> ProfileRepository:
        return self._inner.profiles

    @property
    def idempotency(self) -> IdempotencyRecords:
        return self._inner.idempotency

    @property
    def api_keys(self) -> ApiKeyRepository:
        return self._inner.api_keys

    @property
    def audit(self) -> AuditLog:
        return self._inner.audit

    @property
    def outbox(self) -> Outbox:
        return self._inner.outbox

    @property
    def webhooks(self) -> WebhookRepository:
        return self._inner.webhooks

    @property
    def subjects(self) -> SubjectLinks:
        return self._inner.subjects

    @property
    def personal_data(self) -> PersonalData:
        return self._lifecycle().personal_data

    @property
    def erasures(self) -> ErasureSagas:
        return self._lifecycle().erasures

    @property
    def erasure_acknowledgements(self) -> ErasureAcknowledgements:
        return self._lifecycle().erasure_acknowledgements

    def _lifecycle(self) -> PersonalDataUnitOfWork:
        # The SQL stores' units of work have these tables (once entered); a store without them
        # (a test's fake) serves the profile use cases only.
        if not isinstance(self._inner, PersonalDataUnitOfWork):
            raise TypeError("This store keeps no personal-data lifecycle tables.")
        return self._inner

    async def commit(self) -> None:
        await self._inner.commit()

    async def __aenter__(self) -> Self:
        if not self._breaker.allow():
            raise CircuitOpen(
                "The database is failing; requests that need it are refused for a moment.",
                retry_after=max(1.0, math.ceil(self._breaker.seconds_until_probe())),
            )
        # Entered here and left in __aexit__, so the timeout covers the whole unit of work: the
        # body's queries as well as connecting, committing and rolling back.
        self._timeout = asyncio.timeout_at(call_deadline(self._timeout_seconds))
        await self._timeout.__aenter__()
        try:
            await self._inner.__aenter__()
        except BaseException as error:
            final = await self._finish(error)
            if final is error or final is None:
                raise
            raise final from error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        error = exc
        try:
            await self._inner.__aexit__(exc_type, exc, tb)
        except BaseException as raised:  # noqa: BLE001 - judged and re-raised just below
            error = raised
        final = await self._finish(error)
        if final is not None and final is not exc:
            raise final

    async def _finish(self, error: BaseException | None) -> BaseException | None:
        """Leave the timeout; the error the caller should see (a timeout becomes
        `DeadlineExceeded`), counted by the breaker."""
        try:
            await self._timeout.__aexit__(type(error) if error else None, error, None)
        except TimeoutError as timed_out:
            error = DeadlineExceeded("The database did not answer within the request's deadline.")
            error.__cause__ = timed_out
        self._judge(error)
        return error

    def _judge(self, error: BaseException | None) -> None:
        if getattr(self._inner, "served_by_replica", False):
            # A read replica's failure or success says nothing of the primary the breaker
            # guards (keel.storage.postgres.replicas skips a failing replica itself).
            self._breaker.release_probe()
            return
        if isinstance(error, Unavailable):
            self._breaker.record_failure()
        elif isinstance(error, asyncio.CancelledError):
            self._breaker.release_probe()  # the caller went away: no verdict on the database
        else:
            self._breaker.record_success()
