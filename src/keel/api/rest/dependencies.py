"""FastAPI dependencies: what the routes need of the process, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Protocol

from fastapi import Depends, Request

from keel.admission import Admission, bearer_token
from keel.api.http.request_state import request_state
from keel.domain.api_keys import Principal
from keel.domain.errors import Forbidden
from keel.observability.context import note_caller
from keel.service.use_cases import CallerAuthenticator, EndUserUseCases, PersonalDataUseCases, ProfileUseCases


class RestServices(Protocol):
    """What the REST routes and middleware need of the process, found in the application's
    state as `services` (the composition root puts it there; the routes never import it)."""

    @property
    def profiles(self) -> ProfileUseCases: ...
    @property
    def authenticator(self) -> CallerAuthenticator: ...
    @property
    def admission(self) -> Admission: ...
    @property
    def personal_data(self) -> PersonalDataUseCases | None: ...
    @property
    def end_users(self) -> EndUserUseCases | None: ...


async def get_services(request: Request) -> RestServices:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    services: RestServices = request.app.state.services
    return services


async def authenticated_caller(request: Request) -> Principal:
    """The caller, as admission already identified it, or authenticated now. Raises
    `Unauthenticated` (401) for a missing or unknown key."""
    caller = request_state().caller
    principal = caller.principal if caller is not None else None
    if principal is None:
        if caller is not None and caller.error is not None:
            raise caller.error  # the lookup admission made: one per request
        services: RestServices = request.app.state.services
        principal = await services.authenticator.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
    note_caller(principal.key_id)
    return principal


ServicesDep = Annotated[RestServices, Depends(get_services)]
Caller = Annotated[Principal, Depends(authenticated_caller)]


def admin_caller(what: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, refused unless admin ("Only admin keys may `what`."), before the
    body is read and before any lookup, so that a key that is not admin learns nothing."""

    async def caller(request: Request) -> Principal:
        principal = await authenticated_caller(request)
        if not principal.is_admin:
            raise Forbidden(f"Only admin keys may {what}.")
        return principal

    return caller


def iso_time(value: datetime | None) -> str | None:
    """A time as the admin routes answer it: ISO 8601 to the microsecond; None stays null."""
    return value.isoformat(timespec="microseconds") if value is not None else None
