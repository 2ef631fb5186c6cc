"""Who is calling, and whether the call may run: the gRPC counterpart of the REST admission.

The caller is the API key in the `authorization` metadata. A key with the `edge` scope may
name, in `keel-on-behalf-of`, the key of a caller it has authenticated, with the SHA-256 of the
caller's token as proof (`keel-on-behalf-of-sha256`); the call then runs as that caller.

Every call is charged, as on REST: to the key that authenticated the connection's call (an
edge's calls, its callers' included, to the edge's own key and plan: the edge charged each of
its callers already, and its own plan bounds what a stolen edge key could do), and a call
without a valid key to the peer's address under the anonymous plan, so that guessing keys is
rate limited too. Admitted calls are shed under the same adaptive limit as REST.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import CapacityReduced, Forbidden, KeelError, QuotaExceeded, Unauthenticated
from keel.observability.context import note_caller
from keel.resilience.load_shedder import Priority
from keel.rpc.metadata import EDGE, ON_BEHALF_OF, ON_BEHALF_OF_SHA256
from keel.rpc.status import EdgeRejected

if TYPE_CHECKING:
    from keel.bootstrap import Keel
    from keel.ratelimit.guard import RateLimitGuard, RateLimitOutcome

_SERVICE = "/keel.profiles.v1.ProfileService/"


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # as in the rate-limit cost table
    priority: Priority


# Method -> the operation it performs, named and prioritized as its REST twin.
OPERATIONS = {
    _SERVICE + "GetProfile": Operation("profiles.get", Priority.CRITICAL),
    _SERVICE + "BatchGetProfiles": Operation("profiles.list", Priority.SHEDDABLE),
    _SERVICE + "CreateProfile": Operation("profiles.create", Priority.CRITICAL),
    _SERVICE + "UpdateProfile": Operation("profiles.update", Priority.CRITICAL),
    _SERVICE + "DeleteProfile": Operation("profiles.delete", Priority.CRITICAL),
    _SERVICE + "ListProfiles": Operation("profiles.list", Priority.SHEDDABLE),
}
_CALLER = Operation("other", Priority.NORMAL)
_CREDENTIALS = frozenset({"authorization", ON_BEHALF_OF, ON_BEHALF_OF_SHA256})

_principal: ContextVar[Principal | None] = ContextVar("keel_grpc_principal", default=None)
_via_edge: ContextVar[bool] = ContextVar("keel_grpc_via_edge", default=False)


def caller() -> Principal:
    """The principal of the call being served (set by `Admission` before the method runs)."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("An API key is required: send `authorization: Bearer keel_...`.")
    return principal


def via_edge() -> bool:
    """Whether the call being served is an edge's, on behalf of one of its callers: the edge
    renders the answer for that caller itself (and may need all of it to do so)."""
    return _via_edge.get()


class Admission:
    def __init__(self, keel: Keel) -> None:
        self._keel = keel
        # Only a core serves gRPC: an edge has no keys of its own to vouch from.
        self._authenticator = keel.local.authenticator

    async def run(
        self,
        method: str,
        metadata: Mapping[str, str],
        peer: str,
        call: Callable[[], Awaitable[Any]],
        *,
        repeated: frozenset[str] = frozenset(),
    ) -> Any:
        """Run `call` as the caller `metadata` (the call's text metadata) names, if admitted.
        `peer` is gRPC's name of the other end (`ipv4:127.0.0.1:5000`); `repeated`, the
        metadata keys sent more than once."""
        keel = self._keel
        operation = OPERATIONS.get(method, _CALLER)
        guard = keel.rate_limits
        try:
            if repeated & _CREDENTIALS:
                # Two parsers (a proxy's, ours) could pick different ones: no guessing.
                raise Unauthenticated(f"Send each of {', '.join(sorted(_CREDENTIALS))} at most once.")
            principal, charged_key = await self._authenticate(metadata)
        except KeelError:
            if guard is not None:
                # Charged to the address, as REST does: an unknown key costs a lookup.
                await self._charge_anonymous(guard, peer, operation)
            raise
        note_caller(principal.key_id)
        token = _principal.set(principal)
        edge_token = _via_edge.set(charged_key is not principal)
        try:
            if guard is None:
                return await self._shed_or_run(operation, call)
            catalog = keel.rate_limit_catalog
            client = f"key:{charged_key.key_id}"
            plan = catalog.plan_named(charged_key.plan)
            cost = catalog.cost_of(operation.name)
            outcome = await guard.admit(client, plan, cost)
            if not outcome.allowed:
                raise _quota_exceeded(outcome)
            served = False
            try:
                result = await self._shed_or_run(operation, call)
                served = True
                return result
            finally:
                guard.release(client)
                if not served:
                    await guard.refund(client, plan, cost)
        finally:
            _via_edge.reset(edge_token)
            _principal.reset(token)

    async def _charge_anonymous(self, guard: RateLimitGuard, peer: str, operation: Operation) -> None:
        """Charge a call that presented no valid key to its address; `QuotaExceeded` if over."""
        catalog = self._keel.rate_limit_catalog
        client = f"ip:{peer_address(peer)}"
        outcome = await guard.admit(client, catalog.plan_named(None), catalog.cost_of(operation.name))
        if not outcome.allowed:
            raise _quota_exceeded(outcome) from None
        guard.release(client)

    async def _authenticate(self, metadata: Mapping[str, str]) -> tuple[Principal, Principal]:
        """The principal the call runs as, and the one it is charged to (the key that
        authenticated the call: an edge's, when it acts for one of its callers)."""
        from_edge = metadata.get(EDGE) is not None
        authorization = metadata.get("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        try:
            principal = await self._authenticator.authenticate(
                token.strip() if scheme.lower() == "bearer" else None
            )
        except Unauthenticated as error:
            if from_edge:
                raise EdgeRejected(f"The edge's own API key was refused: {error.detail}") from None
            raise
        if from_edge and not principal.can(Scope.EDGE):
            raise EdgeRejected(f"The edge's API key lacks the `{Scope.EDGE}` scope.")
        on_behalf_of = metadata.get(ON_BEHALF_OF)
        if on_behalf_of is None:
            return principal, principal
        if not principal.can(Scope.EDGE):
            raise Forbidden(f"Only a key with the `{Scope.EDGE}` scope may send `{ON_BEHALF_OF}`.")
        proof = metadata.get(ON_BEHALF_OF_SHA256) or ""
        return await self._authenticator.resolve(on_behalf_of, proof), principal

    async def _shed_or_run(self, operation: Operation, call: Callable[[], Awaitable[Any]]) -> Any:
        shedder = self._keel.shedder
        if shedder is None:
            return await call()
        admitted_at = shedder.try_admit(operation.priority)
        if admitted_at is None:
            # Jittered, as REST's: refused callers must not all come back in the same second.
            wait = float(random.randint(1, 3))  # noqa: S311 - jitter, not security
            raise CapacityReduced("The service is shedding load; retry after the indicated time.", wait)
        succeeded = False
        try:
            result = await call()
            succeeded = True
            return result
        finally:
            shedder.release(operation.name, admitted_at, succeeded=succeeded)


def peer_address(peer: str) -> str:
    """The address in gRPC's peer name: `ipv4:127.0.0.1:5000` -> `127.0.0.1`,
    `ipv6:[::1]:5000` -> `::1`; anything else (a Unix socket) as it is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.removeprefix("[").removesuffix("]")
    return peer


def _quota_exceeded(outcome: RateLimitOutcome) -> QuotaExceeded:
    violated = outcome.violated_policies
    wait = outcome.retry_after_seconds
    return QuotaExceeded(
        f"Request quota exceeded ({', '.join(violated)}); retry after {wait} s.",
        retry_after=wait,
        violated_policies=tuple(violated),
    )
