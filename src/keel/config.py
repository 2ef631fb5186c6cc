"""Typed settings from `KEEL_*` environment variables. Loaded once, by the caller, never at import."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keel.domain.end_users import ASYMMETRIC_ALGORITHMS
from keel.domain.ids import REGION_PATTERN
from keel.domain.webhooks import DEFAULT_DELAYS_SECONDS
from keel.ratelimit.policy import Plan, Policy
from keel.ratelimit.proxy_refusals import parse_address


class PolicySettings(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    quota: int = Field(gt=0, le=10**12)
    window_seconds: float = Field(ge=0.001, le=366 * 86400, allow_inf_nan=False)
    burst: int | None = Field(default=None, gt=0, le=10**12, description="Defaults to the quota.")
    shadow: bool = False


class PlanSettings(BaseModel):
    policies: list[PolicySettings]
    concurrency: int = Field(default=20, gt=0)

    def to_plan(self, name: str) -> Plan:
        return Plan(
            name,
            tuple(
                Policy(p.name, p.quota, p.window_seconds, p.burst or p.quota, p.shadow) for p in self.policies
            ),
            self.concurrency,
        )


# What `KEEL_ENVIRONMENT=production` closes, unless set one by one: everything that answers
# without an API key and describes or measures the service (security finding 14).
CLOSED_IN_PRODUCTION = (
    "api_docs",
    "api_port_metrics",
    "graphql_introspection",
    "graphql_graphiql",
    "grpc_reflection",
)


class Settings(BaseSettings):
    # Inputs are left out of validation errors: a database URL may carry a password.
    model_config = SettingsConfigDict(
        env_prefix="KEEL_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    environment: Literal["development", "production"] = Field(
        default="development",
        description="The one production switch: `production` turns off, unless set one by one, "
        "the API documentation, /metrics on the API port, GraphQL introspection and GraphiQL, "
        "and gRPC reflection.",
    )
    api_docs: bool = Field(
        default=True, description="Swagger UI at /docs and the OpenAPI documents at /openapi.json."
    )
    api_port_metrics: bool = Field(
        default=True,
        description="/metrics on the API port (with --grpc-only: on KEEL_PORT); off in production.",
    )
    api_sunsets: dict[str, date] = Field(
        default_factory=dict,
        description="JSON: an older REST API version -> the day it stops being served, e.g. "
        '{"2026-11-28": "2027-06-30"}: its answers carry a Sunset header (docs/api/versions.md).',
    )
    management_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /metrics, /healthz and /readyz on this port, apart from the API; unset: none.",
    )
    management_host: str = Field(default="127.0.0.1", description="Address of the management port.")
    agent_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Answer HAProxy's agent check on this port (on KEEL_MANAGEMENT_HOST): the adaptive "
        "concurrency limit as the server's maxconn (docs/fleet.md); one worker per node. Unset: none.",
    )

    database_url: str = Field(
        default="sqlite:///./keel.sqlite3",
        description="postgresql://user:password@host:port/db, or sqlite:///path/to/file.sqlite3",
    )
    storage_layout: Literal["normalized", "document"] = Field(
        default="normalized",
        description="How profiles are stored: normalized (profiles, emails, links tables) or document "
        "(one JSON document per profile). `keel migrate` records it on a database without profiles; "
        "a node refuses to start on a database that records the other one (docs/layouts.md).",
    )
    database_replica_urls: str = Field(
        default="",
        description="Comma-separated postgresql:// URLs of streaming replicas of the database that may "
        "serve profile reads; writes answer a consistency token that later reads carry for "
        "read-your-writes (docs/replicas.md). Empty: every read on the primary.",
    )
    replica_max_lag_seconds: float = Field(
        default=1.0,
        gt=0,
        le=300,
        description="A replica lagging the primary by more than this serves no reads until it catches up.",
    )
    region: str = Field(default="eu1", description="Region of profiles created here; part of each id.")
    attribute_schema: Path | None = Field(
        default=None, description="JSON Schema (2020-12) file for profile attributes."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_command_timeout_seconds: float = 5.0
    db_acquire_timeout_seconds: float = 5.0
    request_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Deadline of a request; a client may ask for less."
    )
    db_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Longest a unit of work may take, cut to the request's deadline."
    )
    db_breaker_open_seconds: float = Field(default=2.0, gt=0)
    idempotency_lease_seconds: float = Field(
        default=15.0, gt=0, description="After this, a reservation left by a dead request is taken over."
    )
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1, description="Retries per first attempt.")
    cache_enabled: bool = True
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_fresh_seconds: float = Field(default=5.0, ge=0)
    cache_stale_if_error_seconds: float = Field(
        default=600.0, ge=0, description="How old a copy may be served when the database is unavailable."
    )
    max_body_bytes: int = 64 * 1024
    cursor_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs pagination cursors; every process serving one API must share it. "
        "Unset: derived from the database URL (processes on one database agree, but the key is only "
        "as secret as that URL).",
    )
    # The HTTP server's own limits (keel.api.http.protocol): slow or huge requests never reach the app.
    http_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request line and headers must arrive within this of the connection opening or, "
        "on a keep-alive connection, of the next request's first byte; else 408 (or a quiet close when "
        "a new connection sent nothing).",
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Processes serving HTTP on the one port (`keel serve --workers`), kept running by "
        "uvicorn's supervisor. 0: one per core when KEEL_REDIS_URL is set (the workers share rate "
        "limits and cache invalidations through it), else one. More than one needs KEEL_REDIS_URL and "
        "no gRPC port (serve gRPC with --grpc-only in a process of its own).",
    )
    shutdown_grace_seconds: int = Field(  # whole seconds: uvicorn's timeout_graceful_shutdown
        default=10,
        ge=1,
        le=600,
        description="On SIGTERM new connections are refused at once, and requests in flight have this "
        "long to finish; those still running then are cut.",
    )
    http_keep_alive_seconds: int = Field(  # whole seconds: uvicorn's timeout_keep_alive is an int
        default=5,
        ge=1,
        le=3600,
        description="An idle keep-alive connection is closed after this. Behind a load balancer that "
        "reuses connections, set it above the balancer's own idle timeout, so that the server never "
        "closes a connection the balancer is sending a request on.",
    )
    http_body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Each piece of a request body must arrive within this of the previous one; else 408.",
    )
    http_max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, description="Longest request line and headers; else 431."
    )
    http_max_headers: int = Field(default=100, ge=10, le=10_000, description="Most header lines; else 431.")
    api_key_cache_seconds: float = 60.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    trace_exporter: Literal["none", "otlp", "console"] = "none"
    trace_sampling_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    otlp_endpoint: str | None = None
    service_name: str = "keel"

    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; rate limits are shared through it when set."
    )
    ratelimit_enabled: bool = Field(default=True, description="The global kill switch for rate limits.")
    ratelimit_plans: dict[str, PlanSettings] | None = Field(
        default=None, description="JSON: plan name -> {policies: [...], concurrency}; None = built-in plans."
    )
    ratelimit_default_plan: str = "standard"
    ratelimit_anonymous_plan: str = "anonymous"
    ratelimit_costs: dict[str, int] = Field(default_factory=dict, description="JSON: operation -> units.")
    ratelimit_nodes: int = Field(
        default=1,
        ge=1,
        description="Keel nodes sharing the quotas (each of KEEL_WORKERS processes): the least count "
        "of processes a process divides by; with Redis, the live processes counted there when more.",
    )
    ratelimit_fleet_concurrency: bool = Field(
        default=True,
        description="With Redis, count each key's concurrency cap across the fleet (a slot on Redis, "
        "one more round trip per request); false: per process, N processes admitting N x the cap.",
    )
    proxy_runtime_api: str = Field(
        default="",
        description="HAProxy runtime APIs in front of this node (unix:/path or host:port, comma-"
        "separated): keys the shared limiter refuses are written to their table KEEL_PROXY_REFUSAL_TABLE, "
        "and refused there until they could conform (docs/fleet.md). Empty: none.",
    )
    proxy_refusal_table: str = Field(
        default="keel_refused", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The proxy's stick table."
    )
    ratelimit_redis_timeout_seconds: float = Field(default=0.05, gt=0)
    ratelimit_breaker_open_seconds: float = Field(default=2.0, gt=0)
    trusted_proxy_hops: int = Field(
        default=0, ge=0, description="Proxies in front of Keel whose X-Forwarded-For entries are trusted."
    )
    load_shedding_enabled: bool = True
    concurrency_limit_initial: int = Field(default=16, ge=1)
    concurrency_limit_min: int = Field(default=2, ge=1)
    concurrency_limit_max: int = Field(default=256, ge=1)

    # gRPC
    grpc_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve gRPC on this port beside HTTP; unset: no gRPC."
    )
    grpc_host: str = Field(default="127.0.0.1", description="Address the gRPC server listens on.")
    grpc_reflection: bool = Field(default=True, description="gRPC server reflection; off in production.")
    grpc_encoded_profiles: int = Field(
        default=10_000,
        ge=0,
        description="Profile encodings kept for batch answers (LRU); 0: encode every time.",
    )
    core_url: str | None = Field(
        default=None,
        pattern=r"^grpc://[^/\s]+:[0-9]+$",
        description="grpc://host:port of a core: this process becomes an edge that serves REST and "
        "GraphQL with every operation run by that core.",
    )
    core_api_key: SecretStr | None = Field(
        default=None, description="An API key with the `edge` scope on the core; required with KEEL_CORE_URL."
    )
    core_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Longest wait for one call to the core (cut to the request's deadline).",
    )

    # GraphQL
    graphql_introspection: bool = Field(
        default=True, description="Schema introspection on /graphql; off in production."
    )
    graphql_graphiql: bool = Field(
        default=True, description="GraphiQL at GET /graphql from a browser; off in production."
    )
    graphql_max_document_bytes: int = Field(default=16 * 1024, ge=256, description="Longest query text.")
    graphql_max_tokens: int = Field(default=2_000, ge=50, description="Most lexical tokens in a query.")
    graphql_max_depth: int = Field(default=10, ge=2, description="Deepest nesting of fields.")
    graphql_max_aliases: int = Field(default=15, ge=0, description="Most aliased fields in a document.")
    graphql_max_cost: int = Field(
        default=500, ge=1, description="Most rate-limit units one operation may ask for (GitHub-style cost)."
    )
    graphql_persisted_queries: int = Field(
        default=1_000,
        ge=0,
        description="Automatic persisted queries kept per process (LRU), and shared on Redis when "
        "KEEL_REDIS_URL is set; 0: off.",
    )
    graphql_get_max_age_seconds: int = Field(
        default=5, ge=0, description="Cache-Control max-age of GET responses to queries."
    )
    graphql_metric_operation_names: int = Field(
        default=50, ge=1, description="Distinct operation names in metrics; later ones share `other`."
    )

    # Events (docs/events.md)
    nats_url: str | None = Field(
        default=None,
        description="nats://host:port of a NATS server with JetStream: the outbox relay runs in this "
        "process and publishes events there. Unset: events stay in the outbox (`keel events tail`).",
    )
    events_stream: str = Field(
        default="KEEL_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="JetStream stream of events."
    )
    events_subject_prefix: str = Field(
        default="keel.events",
        pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$",
        description="`keel.profile.updated.v1` is published on `<prefix>.profile.updated.v1`.",
    )
    events_source: str = Field(default="/keel", min_length=1, description="The CloudEvents `source`.")
    events_stream_max_age_seconds: float = Field(
        default=7 * 86400,
        gt=0,
        description="How long the JetStream stream Keel creates keeps an event (a stream that exists"
        " keeps its own limits).",
    )
    events_duplicate_window_seconds: float = Field(
        default=120.0,
        ge=1,
        le=86400,
        description="JetStream drops a message whose id it saw this recently (set on the stream).",
    )
    events_publish_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Longest wait for NATS to acknowledge one publish."
    )
    outbox_relay_lease_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="A relay that dies is replaced by another process's within this.",
    )
    outbox_relay_poll_seconds: float = Field(
        default=0.5, gt=0, le=60, description="How often the relay looks for other processes' events."
    )
    outbox_relay_batch: int = Field(default=100, ge=1, le=10_000, description="Events per relay pass.")
    outbox_retention_seconds: float = Field(
        default=7 * 86400, ge=0, description="Published events are pruned from the outbox after this."
    )
    deleted_profiles_retention_seconds: float = Field(
        default=30 * 86400,
        ge=0,
        description="Soft-deleted profiles are purged to tombstones (personal data removed) after this.",
    )
    erasure_give_up_seconds: float = Field(
        default=2 * 86400,
        ge=1,
        description="An erasure whose step keeps failing, or whose personal-data holders have not all"
        " acknowledged it, this long after it was asked for is reported failed.",
    )
    erasure_acknowledgement_poll_seconds: float = Field(
        default=30.0, gt=0, description="How often an erasure waiting for acknowledgements checks again."
    )
    erasure_poll_seconds: float = Field(
        default=5.0, gt=0, description="How often the erasure runner looks for due sagas of other processes."
    )
    erasure_lease_seconds: float = Field(
        default=60.0,
        ge=2,
        le=3600,
        description="How long a runner holds a saga (renewed by each step): a runner that dies leaves its "
        "sagas to another after this.",
    )

    # Webhooks (docs/events.md#webhooks)
    webhook_secrets_key: SecretStr | None = Field(
        default=None,
        description="Key that seals webhook signing secrets in the database (AES-GCM); 32+ characters, "
        "the same on every process of one database. Unset: derived from the database URL (development "
        "only: the secrets are then only as safe as that URL). To rotate it, move the old key into "
        "KEEL_WEBHOOK_SECRETS_KEY_FALLBACKS, then run `keel webhooks reseal`.",
    )
    webhook_secrets_key_fallbacks: list[SecretStr] = Field(
        default_factory=list,
        max_length=8,
        description="Earlier webhook secrets keys, as a JSON list: secrets sealed with them still open "
        "(and are sealed again with the current key by `keel webhooks reseal`); new ones never use them.",
    )
    webhook_allow_private_targets: bool = Field(
        default=False,
        description="Allow webhook URLs on loopback, private, link-local and other non-public addresses "
        "(refused by default: an admin key must not reach internal services through Keel).",
    )
    webhook_retry_delays_seconds: list[float] = Field(
        default_factory=lambda: [float(s) for s in DEFAULT_DELAYS_SECONDS],
        min_length=1,
        max_length=50,
        description="Wait before each retry of a failed delivery, as a JSON list; after the last, the "
        "delivery is a dead letter. Default about a day in all: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, "
        "2 h, 4 h, 6 h, 8 h.",
    )
    webhook_retry_jitter: float = Field(
        default=0.2, ge=0, le=0.5, description="Each retry delay is stretched or shortened by up to this."
    )
    webhook_attempt_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="Longest one delivery attempt may take, connect to status."
    )
    webhook_endpoint_concurrency: int = Field(
        default=4, ge=1, le=64, description="Delivery attempts in flight per endpoint."
    )
    webhook_dispatcher_poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often the dispatcher looks for due deliveries."
    )
    webhook_dispatcher_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A dispatcher that dies is replaced by another process's within this.",
    )
    webhook_delivery_retention_seconds: float = Field(
        default=7 * 86400, ge=0, description="Delivered deliveries are pruned after this (dead letters stay)."
    )
    # End users (docs/end-users.md): OpenID Connect access tokens from one issuer.
    oidc_issuer: str | None = Field(
        default=None,
        description="The `iss` end users' access tokens must carry; set with KEEL_OIDC_AUDIENCE and "
        "KEEL_OIDC_JWKS_URL to let end users read and change their own profile (`/v1/me`).",
    )
    oidc_audience: str | None = Field(
        default=None, description="The `aud` the tokens must be for (this API)."
    )
    oidc_jwks_url: str | None = Field(
        default=None, description="Where the issuer's signing keys are (https; http only on loopback)."
    )
    oidc_algorithms: list[str] = Field(
        default=["RS256", "ES256"],
        min_length=1,
        description="Signature algorithms accepted, as a JSON list; asymmetric ones only.",
    )
    oidc_leeway_seconds: float = Field(
        default=30.0, ge=0, le=300, description="Clock skew allowed on `exp`, `nbf` and `iat`."
    )
    oidc_jwks_cache_seconds: float = Field(
        default=300.0, gt=0, le=86400, description="How long the issuer's keys are used before fetched again."
    )
    oidc_jwks_refetch_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="An unknown `kid` fetches the keys again at most once in this long, whatever the tokens.",
    )
    oidc_access_tokens_only: bool = Field(
        default=False,
        description="Refuse tokens whose header does not say `typ: at+jwt` (RFC 9068): ID tokens for the "
        "same audience too. Leave off for providers that do not type their access tokens.",
    )
    oidc_plan: str = Field(default="standard", description="The rate-limit plan of end users' requests.")
    end_user_api_version: str = Field(
        default="2026-12-07",
        description="The API version end users' requests are answered in when they name none (as a key's "
        "is pinned when it is made): a later version does not change their answers unannounced.",
    )
    end_user_handle_changes: bool = Field(
        default=False, description="Whether end users may change their own handle."
    )
    end_user_email_changes: bool = Field(
        default=False,
        description="Whether end users may change their own emails (an address they add is unverified).",
    )

    @model_validator(mode="before")
    @classmethod
    def _closed_in_production(cls, data: Any) -> Any:
        """Production's defaults: what is not set one by one is closed. Applied to the values read
        from the environment and the constructor, so `model_copy(update=...)` does not apply it."""
        if isinstance(data, dict) and data.get("environment") == "production":
            return {name: False for name in CLOSED_IN_PRODUCTION} | data
        return data

    @model_validator(mode="after")
    def _production_has_its_own_secrets(self) -> Settings:
        # Development may derive the cursor key; production must not run on a guessable one.
        if self.environment == "production" and self.cursor_secret is None:
            raise ValueError("KEEL_ENVIRONMENT=production needs KEEL_CURSOR_SECRET (32+ random characters)")
        if self.cursor_secret is not None and len(self.cursor_secret.get_secret_value()) < 32:
            raise ValueError("KEEL_CURSOR_SECRET must have at least 32 characters")
        if self.environment == "production" and self.webhook_secrets_key is None:
            raise ValueError(
                "KEEL_ENVIRONMENT=production needs KEEL_WEBHOOK_SECRETS_KEY (32+ random characters)"
            )
        if self.webhook_secrets_key is not None and len(self.webhook_secrets_key.get_secret_value()) < 32:
            raise ValueError("KEEL_WEBHOOK_SECRETS_KEY must have at least 32 characters")
        if any(len(old.get_secret_value()) < 32 for old in self.webhook_secrets_key_fallbacks):
            raise ValueError(
                "every key of KEEL_WEBHOOK_SECRETS_KEY_FALLBACKS must have at least 32 characters"
            )
        return self

    @model_validator(mode="after")
    def _proxy_is_told_only_the_fleets_refusals(self) -> Settings:
        # Without Redis each process decides for its own share of a plan: a refusal by one is
        # not the fleet's, and the proxy would refuse what another process would admit.
        alone = self.ratelimit_nodes == 1 and self.workers <= 1
        if not proxy_runtime_apis(self.proxy_runtime_api) or self.redis_url is not None:
            return self
        if not alone:
            raise ValueError(
                "KEEL_PROXY_RUNTIME_API needs KEEL_REDIS_URL when several processes share the limits"
                " (KEEL_RATELIMIT_NODES, KEEL_WORKERS): without it each decides for its own share"
            )
        if self.core_url is not None:
            # Keys are changed on the core: an edge hears of it only through the push.
            raise ValueError(
                "KEEL_PROXY_RUNTIME_API on an edge needs KEEL_REDIS_URL: key changes made on the core"
                " reach it only through the push, and the proxy would keep refusing on old terms"
            )
        return self

    @model_validator(mode="after")
    def _agent_port_is_its_own(self) -> Settings:
        if self.agent_port is None:
            return self
        if not self.load_shedding_enabled:
            raise ValueError(
                "KEEL_AGENT_PORT reports the adaptive concurrency limit: it needs load shedding on"
            )
        if self.agent_port == 0:
            return self
        taken = {
            "KEEL_PORT": self.port,
            "KEEL_MANAGEMENT_PORT": self.management_port,
            "KEEL_GRPC_PORT": self.grpc_port,
        }
        for name, port in taken.items():
            if port == self.agent_port:
                raise ValueError(f"KEEL_AGENT_PORT is {name} too: give the agent check a port of its own")
        return self

    @model_validator(mode="after")
    def _replicas_are_postgres(self) -> Settings:
        if self.replica_urls and not self.uses_postgres:
            raise ValueError("KEEL_DATABASE_REPLICA_URLS needs a PostgreSQL KEEL_DATABASE_URL")
        for url in self.replica_urls:
            if not url.startswith(("postgresql://", "postgres://")):
                raise ValueError("KEEL_DATABASE_REPLICA_URLS takes postgresql:// URLs, separated by commas")
        return self

    @property
    def replica_urls(self) -> list[str]:
        return [url.strip() for url in self.database_replica_urls.split(",") if url.strip()]

    @model_validator(mode="after")
    def _oidc_is_whole(self) -> Settings:
        parts = {
            "KEEL_OIDC_ISSUER": self.oidc_issuer,
            "KEEL_OIDC_AUDIENCE": self.oidc_audience,
            "KEEL_OIDC_JWKS_URL": self.oidc_jwks_url,
        }
        given = [name for name, value in parts.items() if value]
        if not given:
            return self
        if len(given) != len(parts):
            missing = ", ".join(name for name in parts if name not in given)
            raise ValueError(
                f"end users' tokens need KEEL_OIDC_ISSUER, _AUDIENCE and _JWKS_URL: {missing} missing"
            )
        if self.core_url is not None:
            raise ValueError(
                "end users (KEEL_OIDC_*) are served by a core or a single process, not by an edge"
            )
        unsafe = [a for a in self.oidc_algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unsafe:
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(
                f"KEEL_OIDC_ALGORITHMS takes asymmetric algorithms only ({allowed}), not {', '.join(unsafe)}"
            )
        jwks = urlsplit(self.oidc_jwks_url or "")
        loopback = jwks.hostname in {"127.0.0.1", "::1", "localhost"}
        if jwks.scheme != "https" and not (jwks.scheme == "http" and loopback):
            raise ValueError("KEEL_OIDC_JWKS_URL must be https (http only on a loopback address)")
        return self

    @property
    def end_users_enabled(self) -> bool:
        return self.oidc_issuer is not None

    @model_validator(mode="after")
    def _edge_has_a_key(self) -> Settings:
        if self.core_url is not None and self.core_api_key is None:
            raise ValueError("KEEL_CORE_URL needs KEEL_CORE_API_KEY: a key with the `edge` scope on the core")
        return self

    @model_validator(mode="after")
    def _lease_outlives_requests(self) -> Settings:
        # A reservation must outlive the request holding it, or a retry could take it over while
        # the first request still runs (safe, but answered 409 for nothing).
        if self.idempotency_lease_seconds <= self.request_timeout_seconds:
            raise ValueError("idempotency_lease_seconds must exceed request_timeout_seconds")
        return self

    @model_validator(mode="after")
    def _publish_fits_in_the_lease(self) -> Settings:
        # A batch stops at half the lease; one publish must fit in the other half, so no relay
        # still publishes when its lease has passed to another.
        if self.events_publish_timeout_seconds * 2 > self.outbox_relay_lease_seconds:
            raise ValueError(
                "outbox_relay_lease_seconds must be at least twice events_publish_timeout_seconds"
            )
        # A relay that died after publishing is replaced within the lease; what it published
        # and did not mark is published again then, and must still be recognised as a copy.
        if self.events_duplicate_window_seconds < 2 * self.outbox_relay_lease_seconds:
            raise ValueError(
                "events_duplicate_window_seconds must be at least twice outbox_relay_lease_seconds"
            )
        if self.outbox_relay_poll_seconds * 2 > self.outbox_relay_lease_seconds:
            raise ValueError("outbox_relay_lease_seconds must be at least twice outbox_relay_poll_seconds")
        return self

    @model_validator(mode="after")
    def _webhook_timings_fit(self) -> Settings:
        if any(not 0 < delay <= 7 * 86400 for delay in self.webhook_retry_delays_seconds):
            raise ValueError("each of webhook_retry_delays_seconds must be above 0 and at most 7 days")
        # An attempt in flight must end (and record its outcome) well within the lease.
        if self.webhook_attempt_timeout_seconds * 2 > self.webhook_dispatcher_lease_seconds:
            raise ValueError(
                "webhook_dispatcher_lease_seconds must be at least twice webhook_attempt_timeout_seconds"
            )
        if self.webhook_dispatcher_poll_seconds * 2 > self.webhook_dispatcher_lease_seconds:
            raise ValueError(
                "webhook_dispatcher_lease_seconds must be at least twice webhook_dispatcher_poll_seconds"
            )
        return self

    @field_validator("region")
    @classmethod
    def _region_is_valid(cls, value: str) -> str:
        if not REGION_PATTERN.fullmatch(value):
            raise ValueError("2-10 characters of a-z and 0-9, starting with a letter")
        return value

    @field_validator("proxy_runtime_api")
    @classmethod
    def _runtime_apis_are_addresses(cls, value: str) -> str:
        for address in proxy_runtime_apis(value):
            parse_address(address)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_supported(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ValueError("must start with postgresql:// or sqlite:///")
        return value

    def cursor_key(self) -> bytes:
        """The key of `cursor_secret` (see there)."""
        secret = (
            self.cursor_secret.get_secret_value()
            if self.cursor_secret is not None
            else f"database:{self.database_url}"
        )
        return hashlib.sha256(b"keel-cursors\0" + secret.encode()).digest()

    def webhook_secrets_secret(self) -> str:
        """What the key sealing webhook secrets is derived from (see `webhook_secrets_key`)."""
        if self.webhook_secrets_key is not None:
            return self.webhook_secrets_key.get_secret_value()
        return f"database:{self.database_url}"

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def sqlite_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite:///"))

    def redacted_database_url(self) -> str:
        """The database URL without its password, for log lines and error messages."""
        return redacted_url(self.database_url)


# Query parameters of a database URL that carry a secret (libpq's and asyncpg's names).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword", "passfile"})


def redacted_url(url: str) -> str:
    """`url` with every password in it as `***`: in the user information
    (`postgresql://keel:***@db/keel`) and in the query (`?password=***`)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    location, question, query = rest.partition("?")
    credentials, at, host = location.rpartition("@")
    if at:
        user = credentials.split(":", 1)[0]
        location = f"{user}:***@{host}" if ":" in credentials else f"{user}@{host}"
    if question:
        parts = []
        for part in query.split("&"):
            name, equals, _ = part.partition("=")
            parts.append(f"{name}=***" if equals and name.lower() in _SECRET_PARAMETERS else part)
        query = "&".join(parts)
    return f"{scheme}://{location}{question}{query}"


def redacted_text(text: str, url: str) -> str:
    """`text` (a driver's error message, say), unless `url` carries a password: then a note
    instead, since a driver may quote any part of a malformed URL (`'w0rd@db'` from a password
    with an unencoded `@`), which no search for the whole password would find."""
    if redacted_url(url) != url:
        return "(the message is withheld: the URL carries a password)"
    return text


def proxy_runtime_apis(value: str) -> list[str]:
    """The addresses of `KEEL_PROXY_RUNTIME_API`."""
    return [a.strip() for a in value.split(",") if a.strip()]
