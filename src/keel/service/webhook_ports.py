"""The ports webhooks need: their tables, the HTTP sender, the box that keeps signing secrets
unreadable at rest, and the resolver that tells where a host name points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from keel.domain.webhooks import WebhookDelivery, WebhookEndpoint
from keel.service.outbox_records import OutboxRecord


@dataclass(frozen=True, slots=True)
class StoredEndpoint:
    endpoint: WebhookEndpoint
    sealed_secret: str  # the signing secret as `SecretBox.seal` left it


class WebhookRepository(Protocol):
    """Endpoints, deliveries, the outbox's fan-out mark and the dispatcher's lease; part of the
    unit of work, so a fan-out's deliveries and its mark commit together."""

    async def add_endpoint(self, endpoint: WebhookEndpoint, sealed_secret: str) -> None: ...

    async def endpoints(self) -> list[StoredEndpoint]: ...

    async def endpoint(self, endpoint_id: str) -> StoredEndpoint | None: ...

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        """Deletes the endpoint and all its deliveries; False when there was none."""
        ...

    async def replace_sealed_secret(self, endpoint_id: str, old: str, new: str) -> bool:
        """Stores `new` as the endpoint's sealed secret if it still holds `old`; False otherwise
        (deleted, or sealed again in between)."""
        ...

    async def events_to_fan_out(self, limit: int) -> list[OutboxRecord]:
        """Outbox events not yet fanned out, in `seq` order."""
        ...

    async def mark_fanned_out(self, seqs: Sequence[int], at: datetime) -> None: ...

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        """Inserts it unless that endpoint already has a delivery of that event."""
        ...

    async def due_deliveries(self, now: datetime, per_endpoint: int) -> list[WebhookDelivery]:
        """Pending deliveries due at `now`: at most `per_endpoint` of each endpoint, earliest
        first, so that one endpoint's backlog never hides another's."""
        ...

    async def hold(self, delivery_ids: Sequence[str], until: datetime) -> None:
        """Moves their next attempt to `until`: claimed by an attempt in flight, which records
        its outcome before then; a process that dies leaves them due again at `until`."""
        ...

    async def record_attempt(self, delivery: WebhookDelivery) -> None:
        """Stores the state, attempt count, schedule and outcome fields of `delivery`."""
        ...

    async def delivery(self, delivery_id: str) -> WebhookDelivery | None: ...

    async def deliveries_of(self, endpoint_id: str, state: str, limit: int) -> list[WebhookDelivery]:
        """An endpoint's deliveries in one state, oldest first."""
        ...

    async def replay_dead(self, endpoint_id: str, delivery_ids: Sequence[str] | None, now: datetime) -> int:
        """Dead deliveries (those named, or all of the endpoint's) become pending, with no
        attempt made and due at `now`; how many did."""
        ...

    async def count_dead(self) -> int: ...

    async def prune_delivered(self, before: datetime) -> int: ...

    async def claim_lease(self, holder: str, now: datetime, until: datetime) -> bool: ...

    async def release_lease(self, holder: str) -> None: ...


class SecretBox(Protocol):
    """Seals signing secrets for storage: the database alone does not reveal them."""

    def seal(self, secret: bytes) -> str: ...

    def open(self, sealed: str) -> bytes:
        """Raises `SecretUnreadable` when no key of the box sealed it."""
        ...

    def sealed_with_current_key(self, sealed: str) -> bool:
        """False for a secret sealed with an older key (or none of the box's)."""
        ...


class SecretUnreadable(Exception):
    """A sealed secret that no key of the box opens (the key was changed and the old one is
    not among the fallbacks)."""


@dataclass(frozen=True, slots=True)
class SendResult:
    status: int | None  # None: no answer (see `error`)
    # None on an answer; else "timeout", "connection", "refused_address", "invalid_url" (the
    # client refuses the URL) or "error" (anything else that went wrong in the attempt).
    error: str | None


class WebhookSender(Protocol):
    async def send(
        self, url: str, headers: dict[str, str], body: bytes, timeout_seconds: float
    ) -> SendResult:
        """POSTs once; never raises for the endpoint's failures (they are the result)."""
        ...

    def host_of(self, url: str) -> str | None:
        """The host (ASCII, as it is resolved) this client connects to for `url`; None when the
        client refuses the URL. The address checks resolve this host, not another spelling."""
        ...

    async def close(self) -> None: ...


class AddressResolver(Protocol):
    async def addresses(self, host: str) -> list[str]:
        """The IP addresses `host` resolves to; raises `OSError` when it does not resolve."""
        ...
