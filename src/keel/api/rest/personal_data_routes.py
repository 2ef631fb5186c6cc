"""Export and erasure of a profile's personal data (admin keys only). Each handler: call one use
case, map the result."""

from __future__ import annotations

from enum import Enum

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from keel.api.rest.dependencies import Caller, ServicesDep
from keel.api.rest.documented_responses import problem_responses
from keel.domain.errors import Unavailable
from keel.service.use_cases import PersonalDataUseCases

# Never kept by a cache on the way: these documents are personal data.
_NO_STORE = {"Cache-Control": "no-store"}


def _personal_data(services: ServicesDep) -> PersonalDataUseCases:
    if services.personal_data is None:
        raise Unavailable("Export and erasure are served by a core, not by an edge: ask the core.")
    return services.personal_data


async def export_profile(profile_id: str, caller: Caller, services: ServicesDep) -> Response:
    """The profile (also soft-deleted, private attributes included), its events as stored in
    the outbox, the metadata of the idempotency records holding it, and its tombstone and
    erasure status once erased, as one JSON document."""
    document = await _personal_data(services).export_profile(caller, profile_id)
    return JSONResponse(document, headers=_NO_STORE)


async def start_erasure(profile_id: str, caller: Caller, services: ServicesDep) -> Response:
    """Starts the erasure saga and answers at once with its status resource (`Location`).
    Asking again returns the same erasure (restarted if it had failed)."""
    status = await _personal_data(services).start_erasure(caller, profile_id)
    document = status.document()
    return JSONResponse(
        document, status_code=202, headers={"Location": f"/v1/erasures/{status.erasure.id}", **_NO_STORE}
    )


async def erasure_status(erasure_id: str, caller: Caller, services: ServicesDep) -> Response:
    """Its state (`running`, `completed`, `failed`), each step with when it was done, the
    personal-data holders that have not acknowledged yet, and the last error."""
    status = await _personal_data(services).erasure_status(caller, erasure_id)
    return JSONResponse(status.document(), headers=_NO_STORE)


def add_routes(router: APIRouter) -> None:
    """Add these routes to the versioned router of `keel.api.rest.routes` (its `/v1` prefix
    applies), so they are served and documented under every version like the profile routes."""
    tags: list[str | Enum] = ["personal data"]
    router.add_api_route(
        "/profiles/{profile_id}/export",
        export_profile,
        methods=["GET"],
        responses=problem_responses(404, 421),
        summary="Export everything Keel holds about a profile (admin)",
        tags=tags,
    )
    router.add_api_route(
        "/profiles/{profile_id}/erasure",
        start_erasure,
        methods=["POST"],
        status_code=202,
        responses=problem_responses(404, 421),
        summary="Erase a profile's personal data (admin)",
        tags=tags,
    )
    router.add_api_route(
        "/erasures/{erasure_id}",
        erasure_status,
        methods=["GET"],
        name="get_erasure",
        responses=problem_responses(404),
        summary="The status of an erasure (admin)",
        tags=tags,
    )
