"""Webhooks of a core: the admin use cases and the dispatcher, over the core's store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from opentelemetry.trace import Tracer

from keel.config import Settings
from keel.domain.webhooks import RetrySchedule
from keel.observability.metrics import Metrics
from keel.service.ports import Clock, Store
from keel.service.webhook_dispatcher import DispatchObserver, DispatchPolicy, WebhookDispatcher
from keel.service.webhook_ports import AddressResolver, SecretBox, WebhookSender
from keel.service.webhooks import WebhookAdmin
from keel.webhooks.http_sender import HttpWebhookSender
from keel.webhooks.resolver import SystemResolver
from keel.webhooks.secret_box import AesGcmSecretBox, box_key


@dataclass(frozen=True)
class Webhooks:
    admin: WebhookAdmin
    dispatcher: WebhookDispatcher


def dispatch_policy(settings: Settings) -> DispatchPolicy:
    return DispatchPolicy(
        schedule=RetrySchedule(
            tuple(timedelta(seconds=s) for s in settings.webhook_retry_delays_seconds),
            jitter=settings.webhook_retry_jitter,
        ),
        attempt_timeout_seconds=settings.webhook_attempt_timeout_seconds,
        per_endpoint=settings.webhook_endpoint_concurrency,
        lease_seconds=settings.webhook_dispatcher_lease_seconds,
        poll_seconds=settings.webhook_dispatcher_poll_seconds,
        retention=timedelta(seconds=settings.webhook_delivery_retention_seconds),
        allow_private_targets=settings.webhook_allow_private_targets,
    )


def dispatch_observer(metrics: Metrics) -> DispatchObserver:
    outcomes = {name: metrics.webhook_deliveries.labels(name) for name in ("delivered", "failed", "dead")}

    def attempted(outcome: str, seconds: float) -> None:
        outcomes[outcome].inc()
        metrics.webhook_attempt_duration.observe(max(0.0, seconds))

    return DispatchObserver(
        attempted=attempted,
        dead_letters=metrics.webhook_dead_letters.set,
        failed=lambda stage: metrics.webhook_dispatcher_failures.labels(stage).inc(),
        leader=lambda held: metrics.webhook_dispatcher_leader.set(1 if held else 0),
    )


def build_webhooks(
    settings: Settings,
    store: Store,
    clock: Clock,
    metrics: Metrics,
    *,
    sender: WebhookSender | None = None,
    resolver: AddressResolver | None = None,
    box: SecretBox | None = None,
    tracer: Tracer | None = None,
    jobs: Store | None = None,
) -> Webhooks:
    """`store` for the admin use cases (requests), `jobs` (default: `store`) for the dispatcher."""
    box = box or AesGcmSecretBox(
        box_key(settings.webhook_secrets_secret()),
        tuple(box_key(old.get_secret_value()) for old in settings.webhook_secrets_key_fallbacks),
    )
    resolver = resolver or SystemResolver()
    sender = sender or HttpWebhookSender(resolver, allow_private=settings.webhook_allow_private_targets)
    dispatcher = WebhookDispatcher(
        jobs or store,
        sender,
        box,
        resolver,
        clock,
        dispatch_policy(settings),
        dispatch_observer(metrics),
    )
    if tracer is not None:
        dispatcher.tracer = tracer
    admin = WebhookAdmin(
        store,
        clock,
        box,
        resolver,
        client_host=sender.host_of,
        allow_private_targets=settings.webhook_allow_private_targets,
        on_replay=dispatcher.wake,
    )
    return Webhooks(admin, dispatcher)
