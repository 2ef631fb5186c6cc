"""The newest version skips Cadwyn's conversion; older versions keep it. Shown on a small
two-version app, since Keel itself has one version today."""

from __future__ import annotations

import httpx
from cadwyn import (
    Cadwyn,
    ResponseInfo,
    Version,
    VersionBundle,
    VersionChange,
    VersionedAPIRouter,
    convert_response_to_previous_version_for,
    schema,
)
from pydantic import BaseModel

from keel.api.rest.cadwyn_internals import serve_newest_version_directly


class Widget(BaseModel):
    id: int
    colour: str


class AddColour(VersionChange):
    description = "Widgets have a colour."
    instructions_to_migrate_to_previous_version = (schema(Widget).field("colour").didnt_exist,)

    @convert_response_to_previous_version_for(Widget)
    def drop_colour(response: ResponseInfo) -> None:
        response.body.pop("colour", None)


router = VersionedAPIRouter()


@router.get("/widgets/{widget_id}", response_model=Widget)
async def get_widget(widget_id: int) -> dict[str, object]:
    return {"id": widget_id, "colour": "blue"}


class _App(Cadwyn):
    swapped = 0

    def _cadwyn_initialize(self) -> None:
        super()._cadwyn_initialize()
        self.swapped = serve_newest_version_directly(self, router, "2027-01-01")


async def test_newest_served_directly_older_still_migrated() -> None:
    app = _App(versions=VersionBundle(Version("2027-01-01", AddColour), Version("2026-01-01")))
    app.generate_and_include_versioned_routers(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        newest = await client.get("/widgets/1", headers={"x-api-version": "2027-01-01"})
        older = await client.get("/widgets/1", headers={"x-api-version": "2026-01-01"})
    assert app.swapped == 1
    assert newest.json() == {"id": 1, "colour": "blue"}
    assert older.json() == {"id": 1}
