"""An edge: REST and GraphQL here, every use case run by the core at `core_url` over gRPC."""

from __future__ import annotations

import time
from collections.abc import Callable

from keel.bootstrap.container import Services, assemble
from keel.bootstrap.protection import build_protection
from keel.config import Settings
from keel.observability.metrics import Metrics
from keel.resilience.retry import Backoff, RetryBudget, RetryPolicy


def build_edge(
    settings: Settings, metrics: Metrics, *, resilience_clock: Callable[[], float] = time.monotonic
) -> Services:
    """REST and GraphQL here, every use case run by the core at `core_url` over gRPC."""
    from keel.api.grpc.client.core_client import CoreClient
    from keel.api.grpc.client.remote_services import RemoteAuthenticator, RemoteProfiles

    assert settings.core_url is not None
    assert settings.core_api_key is not None  # the settings refuse a core URL without it
    guards = build_protection(settings, metrics, resilience_clock=resilience_clock)
    retries = metrics.dependency_retries
    client = CoreClient(
        settings.core_url.removeprefix("grpc://"),
        settings.core_api_key.get_secret_value(),
        RetryPolicy(
            RetryBudget(ratio=settings.retry_budget_ratio, clock=resilience_clock),
            Backoff(),
            on_retry=lambda outcome: retries.labels("core", outcome).inc(),
        ),
        guards.tracer,
        timeout_seconds=settings.core_timeout_seconds,
    )
    guards.closers.append(client.close)

    authenticator = RemoteAuthenticator(client, ttl=settings.api_key_cache_seconds)
    return assemble(settings, metrics, guards, RemoteProfiles(client), authenticator, None, client.readiness)
