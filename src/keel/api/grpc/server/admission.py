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

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

from keel.admission import (
    ONE_SET_OF_CREDENTIALS,
    OTHER,
    Admission,
    Caller,
    Operation,
    Outcome,
    Refusal,
    bearer_token,
)
from keel.admission.operations import (
    ERASURES_GET,
    ERASURES_START,
    HANDLES_CHECK,
    PROFILES_CREATE,
    PROFILES_DELETE,
    PROFILES_GET,
    PROFILES_LIST,
    PROFILES_UPDATE,
)
from keel.api.grpc.wire.metadata import EDGE, ON_BEHALF_OF, ON_BEHALF_OF_SHA256
from keel.api.grpc.wire.status import EdgeRejected
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import CapacityReduced, Forbidden, KeelError, QuotaExceeded, Unauthenticated
from keel.observability.context import note_caller

_SERVICE = "/keel.profiles.v1.ProfileService/"

# gRPC's mapping onto the operations table: method -> the operation it performs.
OPERATIONS: dict[str, Operation] = {
    _SERVICE + "GetProfile": PROFILES_GET,
    _SERVICE + "BatchGetProfiles": PROFILES_LIST,
    _SERVICE + "CreateProfile": PROFILES_CREATE,
    _SERVICE + "UpdateProfile": PROFILES_UPDATE,
    _SERVICE + "DeleteProfile": PROFILES_DELETE,
    _SERVICE + "ListProfiles": PROFILES_LIST,
    _SERVICE + "EraseProfile": ERASURES_START,
    _SERVICE + "GetErasure": ERASURES_GET,
    _SERVICE + "CheckHandle": HANDLES_CHECK,
}

_CREDENTIALS = frozenset({"authorization", ON_BEHALF_OF, ON_BEHALF_OF_SHA256})

_principal: ContextVar[Principal | None] = ContextVar("keel_grpc_principal", default=None)
_via_edge: ContextVar[bool] = ContextVar("keel_grpc_via_edge", default=False)


class KeyResolver(Protocol):
    """The key lookups a core's gRPC admission needs: a bearer token, and an edge's proof."""

    async def authenticate(self, token: str | None) -> Principal: ...
    async def resolve(self, key_id: str, digest: str, *, fresh: bool = False) -> Principal: ...


def caller() -> Principal:
    """The principal of the call being served (set by `GrpcAdmission` before the method runs)."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("An API key is required: send `authorization: Bearer keel_...`.")
    return principal


def via_edge() -> bool:
    """Whether the call being served is an edge's, on behalf of one of its callers: the edge
    renders the answer for that caller itself (and may need all of it to do so)."""
    return _via_edge.get()


class GrpcAdmission:
    """gRPC's side of admission (`keel.admission`): the caller from the call's metadata (with
    the edge's on-behalf-of), the operation from the method, and refusals as domain errors
    (mapped to statuses with details by the server)."""

    def __init__(self, admission: Admission, keys: KeyResolver) -> None:
        self._admission = admission
        # Only a core serves gRPC: an edge has no keys of its own to vouch from.
        self._keys = keys

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
        admission = self._admission
        operation = OPERATIONS.get(method, OTHER)
        address = peer_address(peer)
        try:
            if repeated & _CREDENTIALS:
                # Two parsers (a proxy's, ours) could pick different ones: no guessing.
                raise Unauthenticated(ONE_SET_OF_CREDENTIALS)
            admitted_caller = await self._authenticate(metadata, address)
        except KeelError:
            # Charged to the address, as REST does: an unknown key costs a lookup.
            charged = await admission.charge(Caller(None, address), admission.catalog.cost_of(operation.name))
            if isinstance(charged, Refusal):
                raise refusal_error(charged) from None
            raise
        principal = admitted_caller.principal
        assert principal is not None  # `_authenticate` raises when there is none
        note_caller(principal.key_id)
        token = _principal.set(principal)
        edge_token = _via_edge.set(admitted_caller.charged is not None)
        try:
            entered = await admission.enter(admitted_caller, operation)
            if isinstance(entered, Refusal):
                raise refusal_error(entered)
            served = False
            try:
                result = await call()
                served = True
                return result
            finally:
                # A call that failed is not charged, as a shed one is not.
                await entered.finish(Outcome(succeeded=served, unused=0 if served else entered.cost))
        finally:
            _via_edge.reset(edge_token)
            _principal.reset(token)

    async def _authenticate(self, metadata: Mapping[str, str], address: str) -> Caller:
        """The caller: the principal the call runs as, and the one it is charged to (the key
        that authenticated the call: an edge's, when it acts for one of its callers)."""
        from_edge = metadata.get(EDGE) is not None
        try:
            principal = await self._keys.authenticate(bearer_token(metadata.get("authorization") or ""))
        except Unauthenticated as error:
            if from_edge:
                raise EdgeRejected(f"The edge's own API key was refused: {error.detail}") from None
            raise
        if from_edge and not principal.can(Scope.EDGE):
            raise EdgeRejected(f"The edge's API key lacks the `{Scope.EDGE}` scope.")
        on_behalf_of = metadata.get(ON_BEHALF_OF)
        if on_behalf_of is None:
            return Caller(principal, address)
        if not principal.can(Scope.EDGE):
            raise Forbidden(f"Only a key with the `{Scope.EDGE}` scope may send `{ON_BEHALF_OF}`.")
        proof = metadata.get(ON_BEHALF_OF_SHA256) or ""
        return Caller(await self._keys.resolve(on_behalf_of, proof), address, charged=principal)


def refusal_error(refusal: Refusal) -> KeelError:
    """A refusal as the domain error the server maps to a status with details."""
    if refusal.kind == "shed":
        return CapacityReduced(refusal.detail, float(refusal.retry_after_seconds))
    return QuotaExceeded(
        refusal.detail,
        retry_after=refusal.retry_after_seconds,
        violated_policies=tuple(refusal.violated_policies),
    )


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
