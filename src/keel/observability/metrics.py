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
        # gRPC calls: the counterpart of the two above, by full method name and status code name.
        self.grpc_requests = Counter(
            "keel_grpc_requests",
            "gRPC calls served, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_request_duration = Histogram(
            "keel_grpc_request_duration_seconds",
            "Time from call start to its answer, by method and status code.",
            ["method", "code"],
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
        self.ratelimit_decisions = Counter(
            "keel_ratelimit_decisions",
            "Rate-limit decisions by policy and outcome (allowed, rejected, shadow_rejected).",
            ["policy", "outcome"],
            registry=r,
        )
        self.ratelimit_fallbacks = Counter(
            "keel_ratelimit_fallbacks",
            "Decisions made by the local limiter because the shared one was unavailable, by reason.",
            ["reason"],
            registry=r,
        )
        self.proxy_refusals = Counter(
            "keel_proxy_refusals",
            "Refusals passed on to the proxy in front (KEEL_PROXY_RUNTIME_API), by outcome: sent"
            " (per proxy), failed (a proxy did not take them), dropped (too many waiting).",
            ["outcome"],
            registry=r,
        )
        self.ratelimit_decision_duration = Histogram(
            "keel_ratelimit_decision_duration_seconds",
            "Time to take a rate-limit decision, by backend (shared or local).",
            ["backend"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )
        self.breaker_state = Gauge(
            "keel_circuit_breaker_state",
            "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "keel_circuit_breaker_transitions",
            "Circuit breaker state changes, by dependency and new state.",
            ["breaker", "state"],
            registry=r,
        )
        self.fleet_processes = Gauge(
            "keel_fleet_processes",
            "Keel processes sharing the rate limits and concurrency caps, as this one last saw on Redis.",
            registry=r,
        )
        self.concurrency_limit = Gauge(
            "keel_adaptive_concurrency_limit",
            "The current adaptive concurrency limit of this process.",
            registry=r,
        )
        self.load_shed = Counter(
            "keel_load_shed", "Requests refused by load shedding, by priority.", ["priority"], registry=r
        )
        self.profile_cache_lookups = Counter(
            "keel_profile_cache_lookups",
            "Profile reads by cache outcome: hit, miss, coalesced (joined a read in flight), stale"
            " (served stale because the database is unavailable), error (nothing to serve).",
            ["outcome"],
            registry=r,
        )
        self.cache_invalidations_unpublished = Counter(
            "keel_cache_invalidations_unpublished",
            "Cache invalidations other processes did not get because Redis was unavailable.",
            registry=r,
        )
        self.dependency_retries = Counter(
            "keel_dependency_retries",
            "Retry decisions for failed dependency calls, by dependency and outcome (retried,"
            " budget_exhausted, deadline).",
            ["dependency", "outcome"],
            registry=r,
        )
        Info("keel_build", "Keel build information.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        # GraphQL: labelled by operation name, which clients choose; the GraphQL layer bounds
        # the names it passes (unknown or too many collapse into one label).
        self.graphql_operations = Counter(
            "keel_graphql_operations",
            "GraphQL operations by operation name, type (query, mutation) and outcome (ok, error, rejected).",
            ["operation", "type", "outcome"],
            registry=r,
        )
        self.graphql_operation_duration = Histogram(
            "keel_graphql_operation_duration_seconds",
            "Time to execute a GraphQL operation, by operation name.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # The SLO rules' view of GraphQL (deploy/prometheus/keel-rules.yml): by type (query: a
        # read, mutation: a write) and outcome (ok; caller_error: a GraphQL error of the caller's,
        # quota refusals included; server_error: one of the server's, as a 5xx is on REST).
        self.graphql_request_duration = Histogram(
            "keel_graphql_request_duration_seconds",
            "Time from a GraphQL operation's admission to its answer, by type and outcome "
            "(ok, caller_error, server_error).",
            ["type", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.graphql_operation_cost = Histogram(
            "keel_graphql_operation_cost",
            "Rate-limit units a GraphQL operation asked for before execution, by operation name.",
            ["operation"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.graphql_persisted_queries = Counter(
            "keel_graphql_persisted_queries",
            "Automatic persisted query lookups by outcome (hit, miss, registered).",
            ["outcome"],
            registry=r,
        )
        # How late the loop-lag probe (keel.resilience.loop_lag, a 10 ms timer) woke: the
        # server's own view of a blocked or starved event loop, which a client's latency cannot
        # tell apart from its own delays.
        self.event_loop_lag = Histogram(
            "keel_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 10 ms (one observation per wake-up).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        # PostgreSQL read replicas (keel.storage.postgres.replicas), each named by its place in
        # KEEL_DATABASE_REPLICA_URLS (replica-0, ...), never by its URL.
        self.replica_up = Gauge(
            "keel_replica_up",
            "1 while the replica answers as a standby, 0 while it is skipped as dead or not a standby.",
            ["replica"],
            registry=r,
        )
        self.replica_lag_seconds = Gauge(
            "keel_replica_lag_seconds",
            "How long ago the primary was at the oldest position the replica has not replayed "
            "(0: caught up; -1: not known yet).",
            ["replica"],
            registry=r,
        )
        self.replica_lag_bytes = Gauge(
            "keel_replica_lag_bytes",
            "WAL bytes between the primary's last polled position and what the replica has replayed.",
            ["replica"],
            registry=r,
        )
        self.replica_routed_reads = Counter(
            "keel_replica_routed_reads",
            "Reads that a replica may serve, by where they went: a replica, or the primary (none "
            "caught up with the request's consistency token, within the lag bound, or up).",
            ["server"],
            registry=r,
        )
        # The profiles' layout record and a layout migration's progress, as this node last read
        # them (keel.storage.layout_gauges).
        self.layout_phase = Gauge(
            "keel_layout_phase", "1 for the layout record's phase, 0 for the others.", ["phase"], registry=r
        )
        self.layout_reads = Gauge(
            "keel_layout_reads",
            "1 for the layout profiles are read from, 0 for the other.",
            ["layout"],
            registry=r,
        )
        self.layout_generation = Gauge(
            "keel_layout_generation",
            "The layout record's generation (one more per change of phase).",
            registry=r,
        )
        self.layout_migration_done = Gauge(
            "keel_layout_migration_done_profiles",
            "Profiles the layout migration's backfill or verification has done (0 outside those phases).",
            registry=r,
        )
        self.layout_migration_covered = Gauge(
            "keel_layout_migration_covered_profiles",
            "Profiles the layout migration's current backfill or verification covers.",
            registry=r,
        )
        self.layout_migration_mended = Gauge(
            "keel_layout_migration_mended_profiles",
            "Profiles the layout migration's current phase found different and mended.",
            registry=r,
        )
        # The event outbox and its relay (keel.service.outbox).
        self.outbox_depth = Gauge(
            "keel_outbox_depth",
            "Events committed and not yet published, as last counted by this process's relay.",
            registry=r,
        )
        self.outbox_relay_lag = Histogram(
            "keel_outbox_relay_lag_seconds",
            "Time from a change (its event's time, taken in the write's transaction) to the bus's ack.",
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                30.0,
                60.0,
            ),
            registry=r,
        )
        self.outbox_published = Counter(
            "keel_outbox_published", "Events published to the bus and acknowledged.", registry=r
        )
        self.outbox_relay_failures = Counter(
            "keel_outbox_relay_failures",
            "Relay passes that failed, by what failed (publish, database).",
            ["stage"],
            registry=r,
        )
        self.outbox_relay_leader = Gauge(
            "keel_outbox_relay_leader", "1 while this process holds the relay lease.", registry=r
        )
        # Webhook deliveries (keel.service.webhook_dispatcher).
        self.webhook_deliveries = Counter(
            "keel_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), failed (to be retried), dead "
            "(failed with no retry left: a dead letter).",
            ["outcome"],
            registry=r,
        )
        self.webhook_attempt_duration = Histogram(
            "keel_webhook_attempt_duration_seconds",
            "Time one delivery attempt took, from the request to the endpoint's status (or the failure).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.webhook_dead_letters = Gauge(
            "keel_webhook_dead_letters", "Dead letters waiting for an admin, as last counted.", registry=r
        )
        self.webhook_dispatcher_failures = Counter(
            "keel_webhook_dispatcher_failures",
            "Dispatcher passes that failed, by stage (fan_out, dispatch, record).",
            ["stage"],
            registry=r,
        )
        self.webhook_dispatcher_leader = Gauge(
            "keel_webhook_dispatcher_leader",
            "1 while this process holds the webhook dispatcher lease.",
            registry=r,
        )
