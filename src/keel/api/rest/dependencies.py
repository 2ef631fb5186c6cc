"""FastAPI dependencies: the Keel container and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from keel.domain.api_keys import Principal
from keel.domain.errors import Unauthenticated
from keel.observability.context import note_caller

if TYPE_CHECKING:
    from keel.bootstrap import Keel


async def get_keel(request: Request) -> Keel:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    keel: Keel = request.app.state.keel
    return keel


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


PRINCIPAL_SCOPE_KEY = "keel.principal"
ONE_AUTHORIZATION = "Send one Authorization header, not several."


async def authenticated_caller(request: Request) -> Principal:
    """The caller, as the version picker already resolved it, or authenticated now.
    Raises `Unauthenticated` (401) for a missing or unknown key."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None and len(request.headers.getlist("authorization")) > 1:
        # Two parsers (a proxy's, ours) could pick different ones: no guessing which was meant.
        raise Unauthenticated(ONE_AUTHORIZATION)
    if principal is None:
        keel: Keel = request.app.state.keel
        principal = await keel.authenticator.authenticate(bearer_token(request.headers.get("authorization")))
    note_caller(principal.key_id)
    return principal


KeelDep = Annotated["Keel", Depends(get_keel)]
Caller = Annotated[Principal, Depends(authenticated_caller)]
