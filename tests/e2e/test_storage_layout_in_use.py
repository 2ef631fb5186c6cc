"""The end-to-end suite runs on the layout KEEL_STORAGE_LAYOUT names (tests/e2e/combinations.py):
a profile created over REST, in every combination, lands in that layout's tables only."""

from __future__ import annotations

from tests.conftest import environment_layout
from tests.e2e.conftest import Api
from tests.e2e.test_rest_profiles import create
from tests.integration.test_migrations_up_and_down import query

TABLES = {"normalized": "profiles", "document": "profile_documents"}


async def test_profiles_land_in_the_layout_the_suite_runs_on(api: Api) -> None:
    profile = (await create(api)).json()
    url = api.keel.settings.database_url
    layout = environment_layout()
    assert api.keel.settings.storage_layout == layout
    for name, table in TABLES.items():
        rows = await query(url, f"SELECT id FROM {table}")  # noqa: S608 - constant names
        assert rows == ([{"id": profile["id"]}] if name == layout else []), (name, layout)
