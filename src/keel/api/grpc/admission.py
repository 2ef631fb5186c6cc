"""Who is calling, and whether the call may run: the gRPC counterpart of the REST admission.

The caller is the API key in the `authorization` metadata. A key with the `edge` scope may
name, in `keel-on-behalf-of`, the key of a caller it has authenticated, with the SHA-256 of the
caller's token as proof (`keel-on-behalf-of-sha256`); the call then runs as that caller, and is
not charged to its quota again (the edge charged it). Everything else is
charged to the same per-client limits as REST, and shed under the same adaptive limit.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import CapacityReduced, Forbidden, QuotaExceeded, Unauthenticated
from keel.resilience.load_shedder import Priority
from keel.rpc.metadata import EDGE, ON_BEHALF_OF, ON_BEHALF_OF_SHA256
from keel.rpc.status import EdgeRejected

if TYPE_CHECKING:
    from keel.bootstrap import Keel

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

_principal: ContextVar[Principal | None] = ContextVar("keel_grpc_principal", default=None)


def caller() -> Principal:
    """The principal of the call being served (set by `Admission` before the method runs)."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("An API key is required: send `authorization: Bearer keel_...`.")
    return principal


class Admission:
    def __init__(self, keel: Keel) -> None:
        self._keel = keel
        # Only a core serves gRPC: an edge has no keys of its own to vouch from.
        self._authenticator = keel.local.authenticator

    async def run(self, method: str, metadata: Mapping[str, str], call: Callable[[], Awaitable[Any]]) -> Any:
        """Run `call` as the caller `metadata` (the call's text metadata) names, if admitted."""
        keel = self._keel
        operation = OPERATIONS.get(method, _CALLER)
        principal, vouched = await self._authenticate(metadata)
        token = _principal.set(principal)
        try:
            guard = keel.rate_limits
            if guard is None or vouched:
                return await self._shed_or_run(operation, call)
            catalog = keel.rate_limit_catalog
            client = f"key:{principal.key_id}"
            plan = catalog.plan_named(principal.plan)
            cost = catalog.cost_of(operation.name)
            outcome = await guard.admit(client, plan, cost)
            if not outcome.allowed:
                violated = outcome.violated_policies
                wait = outcome.retry_after_seconds
                raise QuotaExceeded(
                    f"Request quota exceeded ({', '.join(violated)}); retry after {wait} s.",
                    retry_after=wait,
                    violated_policies=tuple(violated),
                )
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
            _principal.reset(token)

    async def _authenticate(self, metadata: Mapping[str, str]) -> tuple[Principal, bool]:
        """The principal the call runs as, and whether an edge vouched for it (and charged it)."""
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
            # An edge's own calls (resolving its callers' keys) were charged at the edge.
            return principal, principal.can(Scope.EDGE)
        if not principal.can(Scope.EDGE):
            raise Forbidden(f"Only a key with the `{Scope.EDGE}` scope may send `{ON_BEHALF_OF}`.")
        proof = metadata.get(ON_BEHALF_OF_SHA256) or ""
        return await self._authenticator.resolve(on_behalf_of, proof), True

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
