"""FastAPI dependencies: the Keel container and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from keel.admission import bearer_token
from keel.api.http.request_state import request_state
from keel.domain.api_keys import Principal
from keel.observability.context import note_caller

if TYPE_CHECKING:
    from keel.bootstrap import Keel


async def get_keel(request: Request) -> Keel:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    keel: Keel = request.app.state.keel
    return keel


async def authenticated_caller(request: Request) -> Principal:
    """The caller, as admission already identified it, or authenticated now. Raises
    `Unauthenticated` (401) for a missing or unknown key."""
    caller = request_state().caller
    principal = caller.principal if caller is not None else None
    if principal is None:
        if caller is not None and caller.error is not None:
            raise caller.error  # the lookup admission made: one per request
        keel: Keel = request.app.state.keel
        principal = await keel.authenticator.authenticate(bearer_token(request.headers.get("authorization")))
    note_caller(principal.key_id)
    return principal


KeelDep = Annotated["Keel", Depends(get_keel)]
Caller = Annotated[Principal, Depends(authenticated_caller)]
