"""REST's side of admission (`keel.admission`): which operation a request performs, where its
credentials are, and how a refusal is written (a 429 or 503 problem). Two entries, one
pipeline:

- `EarlyRefusals`, in front of the whole application, answers the refusals this process can
  tell alone and at once (`Admission.try_refuse_now`: a client over its concurrency cap or
  known to be over its quota, a priority being shed) before the framework, the request
  envelope and its span. An abuser's refusals, and the shed part of a spike, are what a
  process answers by the thousand, and each one answered there costs a fraction of what it
  costs further in.
- `RestAdmission`, between the envelope and the versioned routes, runs the full pipeline
  (`Admission.enter`) and finishes the ticket with the response's status.

`/healthz`, `/readyz`, `/metrics` and the documentation are outside `/v1/` and never limited
or shed.
"""

from __future__ import annotations

import json
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.admission import OTHER, Admission, Caller, Operation, Outcome, Refusal, Ticket, bearer_token
from keel.admission.operations import (
    ERASURES_GET,
    ERASURES_START,
    HANDLES_CHECK,
    PERSONAL_DATA_EXPORT,
    PROFILES_CREATE,
    PROFILES_DELETE,
    PROFILES_GET,
    PROFILES_LIST,
    PROFILES_UPDATE,
    WEBHOOKS_ADMIN,
)
from keel.api.envelope import Series
from keel.api.http.client_address import client_address
from keel.api.http.request_state import RequestState, request_state
from keel.observability.context import current_request_id, note_caller, valid_request_id
from keel.observability.metrics import Metrics

VERSIONED_PREFIX = "/v1/"
_PROFILES = "/v1/profiles"
_WEBHOOKS = "/v1/webhooks"
_ERASURES = "/v1/erasures/"
_HANDLES = "/v1/handles/"
_ME = "/v1/me"


# The route label of a `/v1/` request no route took: refused (429, 503) or failed before
# routing, or a path with no route (404). Under `/v1/`, so the SLO rules count it with the API's
# requests (deploy/prometheus/keel-rules.yml); `unmatched` is the label of other paths.
UNROUTED_VERSIONED = "/v1/*"


def operation_of(method: str, path: str) -> Operation:
    """REST's mapping onto the operations table: a method on a path."""
    if path == _PROFILES or path == _PROFILES + "/":
        if method == "POST":
            return PROFILES_CREATE
        if method in ("GET", "HEAD"):
            return PROFILES_LIST
        return OTHER
    if path.startswith(_PROFILES + "/") and "/" not in path[len(_PROFILES) + 1 :]:
        if method == "PATCH":
            return PROFILES_UPDATE
        if method == "DELETE":
            return PROFILES_DELETE
        if method in ("GET", "HEAD"):
            return PROFILES_GET
    if path == _ME:
        if method in ("GET", "HEAD"):
            return PROFILES_GET
        if method == "PATCH":
            return PROFILES_UPDATE
    if path == _WEBHOOKS or path.startswith(_WEBHOOKS + "/"):
        return WEBHOOKS_ADMIN
    if path.startswith(_PROFILES + "/"):
        if path.endswith("/export") and method in ("GET", "HEAD"):
            return PERSONAL_DATA_EXPORT
        if path.endswith("/erasure") and method == "POST":
            return ERASURES_START
    if path.startswith(_ERASURES) and method in ("GET", "HEAD"):
        return ERASURES_GET
    if path.startswith(_HANDLES) and method in ("GET", "HEAD"):
        return HANDLES_CHECK
    return OTHER


def _credentials(scope: Scope) -> tuple[str | None, bool]:
    """The bearer token of the Authorization header, and whether there were several (which
    `identify` refuses rather than pick one)."""
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    token = bearer_token(values[0].decode("latin-1")) if values else None
    return token, len(values) > 1


class RestAdmission:
    """The full admission path of `/v1/` requests, as one pure ASGI middleware. The pipeline is
    read from the application's state per request: it is built with the process, after the
    application."""

    def __init__(self, app: ASGIApp, *, trusted_proxy_hops: int) -> None:
        self.app = app
        self._trusted_hops = trusted_proxy_hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(VERSIONED_PREFIX):
            await self.app(scope, receive, send)
            return
        admission: Admission = scope["app"].state.services.admission
        state = request_state()
        state.unrouted_label = UNROUTED_VERSIONED
        caller = await self._caller(scope, state, admission)
        entered = await admission.enter(caller, operation_of(scope["method"], scope["path"]))
        if isinstance(entered, Refusal):
            state.refused = True
            await write_refusal(send, entered, current_request_id() or "")
            return
        await self._serve(scope, receive, send, entered)

    async def _caller(self, scope: Scope, state: RequestState, admission: Admission) -> Caller:
        """The caller, looked up once per request and shared with the version picker and the
        routes through the request state. A missing or unknown key is answered by the route
        (401); here it only means the request is limited by address."""
        caller = state.caller
        if caller is None:
            token, repeated = _credentials(scope)
            caller = state.caller = await admission.identify(
                token, lambda: client_address(scope, self._trusted_hops), repeated=repeated
            )
        elif caller.principal is not None:
            note_caller(caller.principal.key_id)  # found by EarlyRefusals, before the envelope
        return caller

    async def _serve(self, scope: Scope, receive: Receive, send: Send, ticket: Ticket) -> None:
        limits = ticket.limits
        extra: list[tuple[bytes, bytes]] = []
        if limits is not None:
            extra.append((b"ratelimit-policy", limits.plan.policy_header.encode()))
            if limits.ratelimit_header is not None:
                extra.append((b"ratelimit", limits.ratelimit_header.encode()))
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
            elif not message.get("more_body", False):
                # The answer's last bytes: the client's concurrency slots go back first
                # (`finish` runs only after the answer has left).
                await ticket.release_slots()
            await send(message)

        completed = False
        try:
            await self.app(scope, receive, send_noting_status)
            completed = True
        finally:
            # A client that revalidates its cache instead of refetching is rewarded: a 304 is
            # not charged.
            unused = ticket.cost if completed and status == 304 else 0
            await ticket.finish(Outcome(succeeded=status < 400, unused=unused))


class EarlyRefusals:
    """Refusals answered before the framework (see the module's docstring), in the order the
    full path would give them. A request they do not refuse goes on to the application with
    its caller, when already known, in the request state.

    Refusals answered here carry `X-Request-Id` and are counted in the HTTP metrics like any
    other, but get no trace span. While a priority is being shed, its requests are shed here
    before their rate limit is decided, so a client over its quota may see that 503 instead
    of a 429; neither is charged."""

    def __init__(self, metrics: Metrics, *, trusted_proxy_hops: int) -> None:
        self._metrics = metrics
        self._trusted_hops = trusted_proxy_hops
        self._series = Series(metrics.http_requests, metrics.http_request_duration)

    async def answered(self, scope: Scope, send: Send, admission: Admission, state: RequestState) -> bool:
        """Whether the request was refused here (and answered); call for HTTP scopes only."""
        path: str = scope["path"]
        if not path.startswith(VERSIONED_PREFIX):
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
        caller = admission.identify_now(token, lambda: client_address(scope, self._trusted_hops))
        if caller is None:
            return False  # a key to look up (or to refuse with a 401): the full path does that
        refusal = admission.try_refuse_now(caller, operation_of(method, path))
        if refusal is None:
            state.caller = caller
            return False
        state.refused = True
        await write_refusal(send, refusal, _request_id(request_id), early=True)
        self._count(method, 429 if refusal.kind == "quota" else 503, started)
        return True

    def _count(self, method: str, status: int, started: float) -> None:
        # Labelled as the envelope labels the full path's refusals: answered before routing.
        self._series.observe((method, UNROUTED_VERSIONED, str(status)), time.perf_counter() - started)


def _request_id(asked: str) -> str:
    """The caller's request id when worth keeping, else a new one (the envelope would use the
    trace id; an early refusal has no trace)."""
    return asked if valid_request_id(asked) else os.urandom(16).hex()


async def write_refusal(send: Send, refusal: Refusal, request_id: str, *, early: bool = False) -> None:
    """A 429 or 503 problem, written straight to ASGI: an abuser's requests, and the shed part of
    a spike, are answered by the thousand, so this path builds no Response object and only one
    small JSON document. `early`: answered before the envelope, which would add the request id."""
    if refusal.kind == "quota":
        headers, body = _quota_exceeded(refusal, request_id)
        status = 429
    else:
        body = f"{_SHED_HEAD}{json.dumps(request_id)}}}".encode()
        headers = [*_SHED_HEADERS, (b"retry-after", str(refusal.retry_after_seconds).encode())]
        status = 503
    headers.append((b"content-length", str(len(body)).encode()))
    if early:
        headers.append((b"x-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _quota_exceeded(refusal: Refusal, request_id: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    limits = refusal.limits
    assert limits is not None  # a quota refusal always carries its decision
    violated = refusal.violated_policies  # policy names: [a-z0-9_-], safe inside JSON strings
    names = ",".join(f'"{name}"' for name in violated)
    body = (
        f'{{"type":"urn:keel:problem:quota-exceeded","title":"Quota exceeded","status":429,'
        f'"detail":{json.dumps(refusal.detail)},'
        f'"request_id":{json.dumps(request_id)},"violated_policies":[{names}]}}'
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"retry-after", str(refusal.retry_after_seconds).encode()),
        (b"ratelimit-policy", limits.plan.policy_header.encode()),
    ]
    if limits.ratelimit_header is not None:
        headers.append((b"ratelimit", limits.ratelimit_header.encode()))
    return headers, body


_SHED_HEAD = (
    '{"type":"urn:keel:problem:temporary-reduced-capacity","title":"Temporarily reduced capacity",'
    '"status":503,"detail":"The service is shedding load; retry after the indicated time.","request_id":'
)
_SHED_HEADERS = [(b"content-type", b"application/problem+json")]
