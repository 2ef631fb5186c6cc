"""Prometheus metrics. One registry per application instance, so tests can build many apps."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from keel import __version__

# Buckets sized for a service whose reads take around a millisecond.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.http_requests = Counter(
            "keel_http_requests",
            "HTTP requests served, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            "keel_http_request_duration_seconds",
            "Time from request start to the end of the response, by method, route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "keel_http_requests_in_flight", "HTTP requests being served now.", registry=r
        )
        self.db_query_duration = Histogram(
            "keel_db_query_duration_seconds",
            "Database call duration by operation and outcome.",
            ["operation", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.db_pool_size = Gauge("keel_db_pool_connections", "Open database connections.", registry=r)
        self.db_pool_in_use = Gauge(
            "keel_db_pool_connections_in_use", "Database connections lent out now.", registry=r
        )
        Info("keel_build", "Keel build information.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
