"""FastAPI dependencies: the Keel container and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from keel.domain.api_keys import Principal

if TYPE_CHECKING:
    from keel.bootstrap import Keel


def get_keel(request: Request) -> Keel:
    keel: Keel = request.app.state.keel
    return keel


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def authenticated_caller(request: Request) -> Principal:
    keel = get_keel(request)
    return await keel.authenticator.authenticate(bearer_token(request.headers.get("authorization")))


KeelDep = Annotated["Keel", Depends(get_keel)]
Caller = Annotated[Principal, Depends(authenticated_caller)]
