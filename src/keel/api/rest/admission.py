"""Admission of API requests, as one pure ASGI middleware between the request envelope and the
versioned routes: the caller's identity, the per-client rate limits, then load shedding by
priority under the process's adaptive concurrency limit.

In front of the whole application, `EarlyRefusals` answers the refusals this process can tell
alone and at once (a client over its concurrency cap or already known to be over its quota, a
priority being shed) before the framework, the request envelope and its span: an abuser's
refusals, and the shed part of a spike, are what a process answers by the thousand, and each
one answered there costs a fraction of what it costs further in.

`/healthz`, `/readyz`, `/metrics` and the documentation are outside `/v1/` and never limited
or shed.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.api.rest.client_address import client_address
from keel.api.rest.dependencies import PRINCIPAL_SCOPE_KEY, bearer_token
from keel.domain.api_keys import Principal
from keel.domain.errors import KeelError
from keel.observability.context import current_request_id, note_caller, valid_request_id
from keel.observability.metrics import Metrics
from keel.observability.sampled_log import SampledLog
from keel.resilience.load_shedder import Priority

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

    from keel.bootstrap import Keel
    from keel.ratelimit.guard import RateLimitOutcome

_VERSIONED_PREFIX = "/v1/"
# Set on requests refused by a rate limit or by load shedding: they get sampled log lines and
# metrics, not an access-log line each (an abuser must not be able to flood the logs).
REJECTED_SCOPE_KEY = "keel.rejected"
_PROFILES = "/v1/profiles"
UNROUTED = "unmatched"  # the route label of requests answered before routing
_shed_log = SampledLog("keel.load_shedding")


def classify(method: str, path: str) -> tuple[str, Priority]:
    """The operation a request performs, named as in the rate-limit cost table, and its priority."""
    if path == _PROFILES or path == _PROFILES + "/":
        if method == "POST":
            return "profiles.create", Priority.CRITICAL
        if method in ("GET", "HEAD"):
            return "profiles.list", Priority.SHEDDABLE
        return "other", Priority.NORMAL
    if path.startswith(_PROFILES + "/") and "/" not in path[len(_PROFILES) + 1 :]:
        if method == "PATCH":
            return "profiles.update", Priority.CRITICAL
        if method == "DELETE":
            return "profiles.delete", Priority.CRITICAL
        if method in ("GET", "HEAD"):
            return "profiles.get", Priority.CRITICAL
    return "other", Priority.NORMAL


class Admission:
    def __init__(self, app: ASGIApp, *, trusted_proxy_hops: int) -> None:
        self.app = app
        self._trusted_hops = trusted_proxy_hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_VERSIONED_PREFIX):
            await self.app(scope, receive, send)
            return
        keel: Keel = scope["app"].state.keel
        operation, priority = classify(scope["method"], scope["path"])
        principal = await _authenticate(scope, keel)
        guard = keel.rate_limits
        if guard is None:
            await self._shed_or_serve(scope, receive, send, keel, operation, priority)
            return
        catalog = keel.rate_limit_catalog
        client = _client(principal, scope, self._trusted_hops)
        plan = catalog.plan_named(principal.plan if principal else None)
        cost = catalog.cost_of(operation)
        outcome = await guard.admit(client, plan, cost)
        if not outcome.allowed:
            await _rate_limited(scope, send, outcome, current_request_id() or "")
            return
        extra = [(b"ratelimit-policy", plan.policy_header.encode())]
        if outcome.ratelimit_header is not None:
            extra.append((b"ratelimit", outcome.ratelimit_header.encode()))
        try:
            status = await self._shed_or_serve(scope, receive, send, keel, operation, priority, extra)
        finally:
            guard.release(client)
        if status is None or status == 304:
            # Shed requests got no service, and a client that revalidates its cache instead of
            # refetching is rewarded: neither is charged.
            await guard.refund(client, plan, cost)

    async def _shed_or_serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        keel: Keel,
        operation: str,
        priority: Priority,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> int | None:
        """Serve the request, with `extra_headers` added to its response, unless the process is
        shedding its priority: the response's status, None when shed.

        Runs after the per-client limits, so that requests refused there (an abuser's) never
        take a slot here nor count in the latencies that steer the limit."""
        shedder = keel.shedder
        admitted_at = shedder.try_admit(priority) if shedder is not None else 0.0
        if admitted_at is None:
            await _shed(scope, send, priority, current_request_id() or "")
            return None
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra_headers:
                    message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            if shedder is not None:
                shedder.release(operation, admitted_at, succeeded=status < 400)
        return status


class EarlyRefusals:
    """Refusals answered before the framework (see the module's docstring), in the order the
    full path would give them: the rate limits, then shedding. A request they do not refuse
    goes on to the application with its caller, when already known, in the scope.

    Refusals answered here carry `X-Request-Id` and are counted in the HTTP metrics like any
    other, but get no trace span. While a priority is being shed, its requests are shed here
    before their rate limit is decided, so a client over its quota may see that 503 instead
    of a 429; neither is charged."""

    def __init__(self, metrics: Metrics, *, trusted_proxy_hops: int) -> None:
        self._metrics = metrics
        self._trusted_hops = trusted_proxy_hops
        self._series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    async def answered(self, scope: Scope, send: Send, keel: Keel) -> bool:
        """Whether the request was refused here (and answered); call for HTTP scopes only."""
        path: str = scope["path"]
        if not path.startswith(_VERSIONED_PREFIX):
            return False
        started = time.perf_counter()
        method: str = scope["method"]
        token: str | None = None
        request_id = ""
        seen_authorization = False
        for name, value in scope["headers"]:
            # One Authorization header (several: the full path refuses them); the last
            # X-Request-Id, as the envelope does.
            if name == b"authorization":
                if seen_authorization:
                    return False
                seen_authorization = True
                token = bearer_token(value.decode("latin-1"))
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
        principal = keel.authenticator.known(token) if token else None
        if token and principal is None:
            return False  # a key to look up (or to refuse with a 401): the full path does that
        operation, priority = classify(method, path)
        guard = keel.rate_limits
        if guard is not None:
            catalog = keel.rate_limit_catalog
            client = _client(principal, scope, self._trusted_hops)
            plan = catalog.plan_named(principal.plan if principal else None)
            outcome = guard.known_refusal(client, plan, catalog.cost_of(operation))
            if outcome is not None:
                await _rate_limited(scope, send, outcome, _request_id(request_id), early=True)
                self._count(method, 429, started)
                return True
        shedder = keel.shedder
        if shedder is not None and shedder.refuses(priority):
            await _shed(scope, send, priority, _request_id(request_id), early=True)
            self._count(method, 503, started)
            return True
        if principal is not None:
            scope[PRINCIPAL_SCOPE_KEY] = principal
        return False

    def _count(self, method: str, status: int, started: float) -> None:
        # Labelled as the envelope labels refusals: they are answered before routing.
        series = self._series.get((method, status))
        if series is None:
            labels = (method, UNROUTED, str(status))
            series = self._series[(method, status)] = (
                self._metrics.http_requests.labels(*labels),
                self._metrics.http_request_duration.labels(*labels),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - started)


def _client(principal: Principal | None, scope: Scope, trusted_hops: int) -> str:
    """Whom a request's rate limits are kept for: its API key, else its address."""
    return f"key:{principal.key_id}" if principal else f"ip:{client_address(scope, trusted_hops)}"


def _request_id(asked: str) -> str:
    """The caller's request id when worth keeping, else a new one (the envelope would use the
    trace id; an early refusal has no trace)."""
    return asked if valid_request_id(asked) else os.urandom(16).hex()


async def _authenticate(scope: Scope, keel: Keel) -> Principal | None:
    """The caller, looked up once per request and handed to the version picker and the routes
    through the scope. A missing or unknown key is answered by the route (401); here it only
    means the request is limited by address."""
    known: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
    if known is not None:
        note_caller(known.key_id)
        return known  # found by EarlyRefusals
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(values) != 1:
        return None  # none, or several (refused by the route): limited by address
    token = bearer_token(values[0].decode("latin-1"))
    if not token:
        return None
    try:
        principal = await keel.authenticator.authenticate(token)
    except KeelError:
        return None
    scope[PRINCIPAL_SCOPE_KEY] = principal
    note_caller(principal.key_id)
    return principal


async def _rate_limited(
    scope: Scope, send: Send, outcome: RateLimitOutcome, request_id: str, *, early: bool = False
) -> None:
    """A 429 problem, written straight to ASGI: an abuser's requests are answered by the
    thousand, so this path builds no Response object and only one small JSON document."""
    scope[REJECTED_SCOPE_KEY] = True
    violated = outcome.violated_policies  # policy names: [a-z0-9_-], safe inside JSON strings
    retry_after = outcome.retry_after_seconds
    names = ",".join(f'"{name}"' for name in violated)
    body = (
        f'{{"type":"urn:keel:problem:quota-exceeded","title":"Quota exceeded","status":429,'
        f'"detail":"Request quota exceeded ({", ".join(violated)}); retry after {retry_after} s.",'
        f'"request_id":{json.dumps(request_id)},"violated_policies":[{names}]}}'
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
        (b"ratelimit-policy", outcome.plan.policy_header.encode()),
    ]
    if outcome.ratelimit_header is not None:
        headers.append((b"ratelimit", outcome.ratelimit_header.encode()))
    if early:  # else the envelope adds it
        headers.append((b"x-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_SHED_HEAD = (
    '{"type":"urn:keel:problem:temporary-reduced-capacity","title":"Temporarily reduced capacity",'
    '"status":503,"detail":"The service is shedding load; retry after the indicated time.","request_id":'
)
_SHED_HEADERS = [(b"content-type", b"application/problem+json")]
_RETRY_AFTER = [str(seconds).encode() for seconds in (1, 2, 3)]


async def _shed(
    scope: Scope, send: Send, priority: Priority, request_id: str, *, early: bool = False
) -> None:
    """The cheapest answer this process can give: shedding happens when it is short of CPU."""
    scope[REJECTED_SCOPE_KEY] = True
    _shed_log.warning("load_shed", priority=priority.name.lower())
    body = f"{_SHED_HEAD}{json.dumps(request_id)}}}".encode()
    # Jittered, so that refused clients do not all come back in the same second.
    retry_after = _RETRY_AFTER[random.randrange(3)]  # noqa: S311 - jitter, not security
    headers = [*_SHED_HEADERS, (b"retry-after", retry_after), (b"content-length", str(len(body)).encode())]
    if early:  # else the envelope adds it
        headers.append((b"x-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
