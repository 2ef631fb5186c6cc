"""`GET /v1/versions`: every API version, its status and what it changed (generated from the
version bundle, see `version_lifecycle`). The same for every version, and open without a key:
a client reads it to learn what upgrading would change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from keel.api.rest.documented_responses import keyless_problem_responses
from keel.api.rest.operation_ids import operation_id
from keel.api.rest.version_lifecycle import VERSIONS_PATH, VersionStatus


class VersionChangeOut(BaseModel):
    name: str
    description: str


class VersionOut(BaseModel):
    version: str = Field(examples=["2026-12-07"])
    status: Literal["current", "deprecated"]
    deprecated_since: str | None = Field(description="The day its successor was released.")
    sunset: str | None = Field(description="The day it stops being served, once the operator set one.")
    changes: list[VersionChangeOut] = Field(description="What this version changed from the one before.")


class VersionList(BaseModel):
    items: list[VersionOut] = Field(description="Newest first.")


def versions_router(statuses: Mapping[str, VersionStatus]) -> APIRouter:
    router = APIRouter(tags=["versions"], generate_unique_id_function=operation_id)
    body = {"items": [status.document() for status in statuses.values()]}

    @router.get(
        VERSIONS_PATH,
        response_model=VersionList,
        summary="The API's versions and their changes",
        responses=keyless_problem_responses(),
    )
    async def list_versions() -> Response:
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})

    return router
