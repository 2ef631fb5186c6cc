"""Who a request is, for admission: the bearer token it presents, and the client its rate limits
are kept for. Every protocol reads credentials its own way and hands them here."""

from __future__ import annotations

from dataclasses import dataclass

from keel.domain.api_keys import Principal
from keel.domain.errors import KeelError

# Credentials sent twice (two `Authorization` headers, two `authorization` metadata entries) are
# refused, never resolved by picking one: a proxy in front could pick the other.
ONE_SET_OF_CREDENTIALS = "Send one set of credentials: one Authorization header (gRPC: one entry)."


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def client_identity(principal: Principal | None, address: str | None) -> str:
    """Whom a request's rate limits are kept for: its API key, else its address (so that
    guessing keys, or calling without one, is limited too)."""
    if principal is not None:
        return f"key:{principal.key_id}"
    assert address is not None, "a caller without a key is known by its address"
    return f"ip:{address}"


@dataclass(frozen=True, slots=True)
class Caller:
    """A request's caller as admission sees it.

    `principal` is who the request runs as, None when it presented no valid key (`error` then
    says why, None when it presented none); `address` is where it came from, read only for a
    caller without a key (None otherwise: a key caller is limited by its key). `charged` is
    whose quota pays: the principal itself, except for an edge acting for one of its callers,
    which pays with its own key.
    """

    principal: Principal | None
    address: str | None
    error: KeelError | None = None
    charged: Principal | None = None

    @property
    def payer(self) -> Principal | None:
        return self.charged if self.charged is not None else self.principal

    @property
    def client(self) -> str:
        return client_identity(self.payer, self.address)
