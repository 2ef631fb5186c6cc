"""Admission of API requests, as one pure ASGI middleware between the request envelope and the
versioned routes: load shedding first (before any other work, so a refusal costs almost
nothing), then the caller's identity, then the per-client rate limits.

`/healthz`, `/readyz`, `/metrics` and the documentation are outside `/v1/` and never limited
or shed.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.api.rest.client_address import client_address
from keel.api.rest.dependencies import PRINCIPAL_SCOPE_KEY, bearer_token
from keel.api.rest.problems import problem_response
from keel.domain.api_keys import Principal
from keel.domain.errors import KeelError
from keel.observability.sampled_log import SampledLog
from keel.resilience.load_shedder import Priority

if TYPE_CHECKING:
    from keel.bootstrap import Keel
    from keel.ratelimit.guard import RateLimitOutcome

_VERSIONED_PREFIX = "/v1/"
_PROFILES = "/v1/profiles"
_shed_log = SampledLog("keel.load_shedding")


def classify(method: str, path: str) -> tuple[str, Priority]:
    """The operation a request performs, named as in the rate-limit cost table, and its priority."""
    if path == _PROFILES or path == _PROFILES + "/":
        if method == "POST":
            return "profiles.create", Priority.CRITICAL
        return "profiles.list", Priority.SHEDDABLE
    if path.startswith(_PROFILES + "/") and "/" not in path[len(_PROFILES) + 1 :]:
        if method == "PATCH":
            return "profiles.update", Priority.CRITICAL
        if method == "DELETE":
            return "profiles.delete", Priority.CRITICAL
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
        shedder = keel.shedder
        admitted_at = None
        if shedder is not None:
            admitted_at = shedder.try_admit(priority)
            if admitted_at is None:
                await _shed(scope, receive, send, priority)
                return
        try:
            principal = await _authenticate(scope, keel)
            guard = keel.rate_limits
            if guard is None:
                await self.app(scope, receive, send)
                return
            client = (
                f"key:{principal.key_id}" if principal else f"ip:{client_address(scope, self._trusted_hops)}"
            )
            plan = keel.rate_limit_catalog.plan_named(principal.plan if principal else None)
            cost = keel.rate_limit_catalog.cost_of(operation)
            outcome = await guard.admit(client, plan, cost)
            if not outcome.allowed:
                await _rate_limited(scope, receive, send, outcome)
                return
            status = 0
            extra = [(b"ratelimit-policy", plan.policy_header.encode())]
            if outcome.ratelimit_header is not None:
                extra.append((b"ratelimit", outcome.ratelimit_header.encode()))

            async def send_with_limits(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            try:
                await self.app(scope, receive, send_with_limits)
            finally:
                guard.release(client)
            if status == 304:
                # A client that revalidates its cache instead of refetching is rewarded.
                await guard.refund(client, plan, cost)
        finally:
            if shedder is not None and admitted_at is not None:
                shedder.release(admitted_at)


async def _authenticate(scope: Scope, keel: Keel) -> Principal | None:
    """The caller, looked up once per request and handed to the version picker and the routes
    through the scope. A missing or unknown key is answered by the route (401); here it only
    means the request is limited by address."""
    token = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            break
    if not token:
        return None
    try:
        principal = await keel.authenticator.authenticate(token)
    except KeelError:
        return None
    scope[PRINCIPAL_SCOPE_KEY] = principal
    return principal


async def _rate_limited(scope: Scope, receive: Receive, send: Send, outcome: RateLimitOutcome) -> None:
    violated = outcome.violated_policies
    headers = {
        "Retry-After": str(outcome.retry_after_seconds),
        "RateLimit-Policy": outcome.plan.policy_header,
    }
    if outcome.ratelimit_header is not None:
        headers["RateLimit"] = outcome.ratelimit_header
    await problem_response(
        429,
        "quota-exceeded",
        "Quota exceeded",
        f"Request quota exceeded ({', '.join(violated)}); retry after {outcome.retry_after_seconds} s.",
        headers=headers,
        extensions={"violated_policies": violated},
    )(scope, receive, send)


async def _shed(scope: Scope, receive: Receive, send: Send, priority: Priority) -> None:
    # Jittered, so that refused clients do not all come back in the same second.
    retry_after = 1 + random.randint(0, 2)  # noqa: S311 - jitter, not security
    _shed_log.warning("load_shed", priority=priority.name.lower())
    await problem_response(
        503,
        "temporary-reduced-capacity",
        "Temporarily reduced capacity",
        "The service is shedding load; retry after the indicated time.",
        headers={"Retry-After": str(retry_after)},
    )(scope, receive, send)
