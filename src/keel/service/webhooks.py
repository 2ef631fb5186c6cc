"""Webhook administration: registering endpoints, listing them, their dead letters and replay.
Admin keys only; every other key is refused before anything is looked up, so it learns
nothing (not even whether an endpoint exists)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keel.domain.api_keys import Principal
from keel.domain.errors import FieldError, Forbidden, NotFound, ValidationFailed
from keel.domain.events import EVENT_TYPES, PROFILE_ERASED
from keel.domain.webhooks import (
    DeliveryState,
    WebhookDelivery,
    WebhookEndpoint,
    is_delivery_id,
    is_endpoint_id,
    new_endpoint_id,
)
from keel.service.ports import Clock, Store
from keel.service.webhook_ports import AddressResolver, SecretBox, SecretUnreadable
from keel.service.webhook_signing import new_secret, secret_text
from keel.service.webhook_targets import check_target

MAX_EVENT_TYPES = len(EVENT_TYPES) + 16  # room for types added later
MAX_LISTED = 1000


@dataclass(frozen=True, slots=True)
class Registered:
    endpoint: WebhookEndpoint
    secret: str  # `whsec_…`: shown once, never again


def _nothing() -> None:
    return None


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only admin keys may manage webhooks.")


def _check_endpoint_id(endpoint_id: str) -> None:
    """An id of another shape names no endpoint: not found, without asking the database (it
    could refuse the text, a NUL byte, outright)."""
    if not is_endpoint_id(endpoint_id):
        raise NotFound("No such webhook endpoint.")


def _check_delivery_ids(delivery_ids: Sequence[str]) -> None:
    errors = [
        FieldError(f"/ids/{i}", "not a dead letter id (whdl_ and 32 hexadecimal digits)")
        for i, delivery_id in enumerate(delivery_ids)
        if not is_delivery_id(delivery_id)
    ]
    if errors:
        raise ValidationFailed(errors)


def _check_event_types(event_types: Sequence[str]) -> tuple[str, ...]:
    errors = [
        FieldError(f"/event_types/{i}", f"unknown event type; known: {', '.join(EVENT_TYPES)}")
        for i, event_type in enumerate(event_types)
        if event_type not in EVENT_TYPES
    ]
    if len(set(event_types)) != len(event_types):
        errors.append(FieldError("/event_types", "must not repeat a type"))
    if errors:
        raise ValidationFailed(errors)
    return tuple(sorted(event_types))


@dataclass(frozen=True, slots=True)
class Resealed:
    """What `WebhookAdmin.reseal_secrets` did, by endpoint id."""

    resealed: tuple[str, ...]  # sealed again with the current key
    current: tuple[str, ...]  # already sealed with it (or by another run meanwhile)
    unreadable: tuple[str, ...]  # no key of the box opens it: re-register these endpoints


class WebhookAdmin:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        box: SecretBox,
        resolver: AddressResolver,
        *,
        client_host: Callable[[str], str | None],
        allow_private_targets: bool = False,
        on_replay: Callable[[], None] = _nothing,
    ) -> None:
        self._store = store
        self._clock = clock
        self._box = box
        self._resolver = resolver
        self._client_host = client_host
        self._allow_private = allow_private_targets
        self._on_replay = on_replay

    async def register(
        self, principal: Principal, url: str, event_types: Sequence[str], holds_personal_data: bool
    ) -> Registered:
        _require_admin(principal)
        types = _check_event_types(event_types)
        if holds_personal_data and types and PROFILE_ERASED not in types:
            # Such an endpoint never receives the erased event, so it could never acknowledge
            # an erasure: the saga would not wait for it, and it would keep the data.
            raise ValidationFailed(
                [
                    FieldError(
                        "/event_types",
                        f"an endpoint holding personal data must receive {PROFILE_ERASED}"
                        " (list it, or list no type: every type)",
                    )
                ]
            )
        await check_target(url, self._resolver, self._client_host, allow_private=self._allow_private)
        secret = new_secret()
        endpoint = WebhookEndpoint(
            id=new_endpoint_id(),
            url=url,
            event_types=types,
            holds_personal_data=holds_personal_data,
            created_at=self._clock.now(),
        )
        async with self._store.unit_of_work() as uow:
            await uow.webhooks.add_endpoint(endpoint, self._box.seal(secret))
            await uow.commit()
        return Registered(endpoint, secret_text(secret))

    async def reseal_secrets(self) -> Resealed:
        """Seals every endpoint's signing secret again with the box's current key, after a key
        rotation (the old key among the fallbacks). The secrets themselves do not change, so the
        receivers notice nothing. An operator's command (`keel webhooks reseal`), not an API
        call: whoever runs it has the keys already."""
        async with self._store.unit_of_work(read_only=True) as uow:
            stored = await uow.webhooks.endpoints()
        resealed: list[str] = []
        current: list[str] = []
        unreadable: list[str] = []
        for entry in stored:
            endpoint_id = entry.endpoint.id
            if self._box.sealed_with_current_key(entry.sealed_secret):
                current.append(endpoint_id)
                continue
            try:
                secret = self._box.open(entry.sealed_secret)
            except SecretUnreadable:
                unreadable.append(endpoint_id)
                continue
            async with self._store.unit_of_work() as uow:
                replaced = await uow.webhooks.replace_sealed_secret(
                    endpoint_id, entry.sealed_secret, self._box.seal(secret)
                )
                await uow.commit()
            # Not replaced: deleted, or sealed again by another run in between; either way no
            # longer this run's to reseal.
            (resealed if replaced else current).append(endpoint_id)
        return Resealed(tuple(resealed), tuple(current), tuple(unreadable))

    async def list_endpoints(self, principal: Principal) -> list[WebhookEndpoint]:
        _require_admin(principal)
        async with self._store.unit_of_work(read_only=True) as uow:
            stored = await uow.webhooks.endpoints()
        return [s.endpoint for s in stored]

    async def get_endpoint(self, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
        _require_admin(principal)
        _check_endpoint_id(endpoint_id)
        async with self._store.unit_of_work(read_only=True) as uow:
            stored = await uow.webhooks.endpoint(endpoint_id)
        if stored is None:
            raise NotFound("No such webhook endpoint.")
        return stored.endpoint

    async def delete_endpoint(self, principal: Principal, endpoint_id: str) -> None:
        """Deletes the endpoint with its pending deliveries and dead letters."""
        _require_admin(principal)
        _check_endpoint_id(endpoint_id)
        async with self._store.unit_of_work() as uow:
            deleted = await uow.webhooks.delete_endpoint(endpoint_id)
            await uow.commit()
        if not deleted:
            raise NotFound("No such webhook endpoint.")

    async def dead_letters(self, principal: Principal, endpoint_id: str, limit: int) -> list[WebhookDelivery]:
        _require_admin(principal)
        _check_endpoint_id(endpoint_id)
        async with self._store.unit_of_work(read_only=True) as uow:
            if await uow.webhooks.endpoint(endpoint_id) is None:
                raise NotFound("No such webhook endpoint.")
            return await uow.webhooks.deliveries_of(endpoint_id, DeliveryState.DEAD, min(limit, MAX_LISTED))

    async def replay(self, principal: Principal, endpoint_id: str, delivery_ids: Sequence[str] | None) -> int:
        """Dead letters (those named, or all of the endpoint's) are delivered again, with a fresh
        retry schedule; how many were. Ids that are not dead letters of the endpoint are skipped."""
        _require_admin(principal)
        if delivery_ids is not None:
            _check_delivery_ids(delivery_ids)  # bad input, whichever endpoint it is sent to
        _check_endpoint_id(endpoint_id)
        async with self._store.unit_of_work() as uow:
            if await uow.webhooks.endpoint(endpoint_id) is None:
                raise NotFound("No such webhook endpoint.")
            replayed = await uow.webhooks.replay_dead(endpoint_id, delivery_ids, self._clock.now())
            await uow.commit()
        if replayed:
            self._on_replay()
        return replayed
