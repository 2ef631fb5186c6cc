"""The outbox relay of a core, when KEEL_NATS_URL names a NATS with JetStream."""

from __future__ import annotations

from datetime import timedelta

from opentelemetry.trace import Tracer

from keel.config import Settings
from keel.observability.metrics import Metrics
from keel.service.outbox import OutboxRelay, RelayObserver, RelayPolicy
from keel.service.ports import Clock, Store


def relay_policy(settings: Settings) -> RelayPolicy:
    return RelayPolicy(
        subject_prefix=settings.events_subject_prefix,
        batch_size=settings.outbox_relay_batch,
        lease_seconds=settings.outbox_relay_lease_seconds,
        poll_seconds=settings.outbox_relay_poll_seconds,
        retention=timedelta(seconds=settings.outbox_retention_seconds),
    )


def relay_observer(metrics: Metrics) -> RelayObserver:
    def published(lag_seconds: float) -> None:
        metrics.outbox_published.inc()
        metrics.outbox_relay_lag.observe(max(0.0, lag_seconds))

    return RelayObserver(
        published=published,
        depth=metrics.outbox_depth.set,
        failed=lambda stage: metrics.outbox_relay_failures.labels(stage).inc(),
        leader=lambda held: metrics.outbox_relay_leader.set(1 if held else 0),
    )


def build_relay(
    settings: Settings, store: Store, clock: Clock, metrics: Metrics, tracer: Tracer | None = None
) -> OutboxRelay | None:
    """None without KEEL_NATS_URL: the events stay in the outbox."""
    if settings.nats_url is None:
        return None
    from keel.events.jetstream import JetStreamPublisher, StreamSpec

    publisher = JetStreamPublisher(
        settings.nats_url,
        StreamSpec(
            settings.events_stream,
            settings.events_subject_prefix,
            settings.events_duplicate_window_seconds,
            settings.events_stream_max_age_seconds,
        ),
        timeout_seconds=settings.events_publish_timeout_seconds,
    )
    relay = OutboxRelay(store, publisher, clock, relay_policy(settings), relay_observer(metrics))
    if tracer is not None:
        relay.tracer = tracer
    return relay
