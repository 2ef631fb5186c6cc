"""`keel migrate` and the start-up check that refuses an unmigrated database."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from keel.storage.layouts import Layout

_SCRIPT_LOCATION = str(Path(__file__).parent)


def _sqlalchemy_url(database_url: str) -> str:
    if database_url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + database_url.split("://", 1)[1]
    if database_url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + database_url.removeprefix("sqlite:///")
    raise ValueError("KEEL_DATABASE_URL must start with postgresql:// or sqlite:///")


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    config.attributes["sqlalchemy_url"] = _sqlalchemy_url(database_url)
    return config


def migrate(database_url: str, revision: str = "head", *, layout: str | None = None) -> None:
    """Bring the database to `revision`, then, given a `layout`, record it as the one profiles
    are kept in if the database holds no profile yet (`LayoutMismatch` if it holds profiles in
    the other one; see layout_record.py). Blocking; call it outside a running event loop."""
    config = _config(database_url)
    config.attributes["storage_layout"] = Layout(layout) if layout is not None else None
    command.upgrade(config, revision)


@cache
def head_revision() -> str:
    head = ScriptDirectory(_SCRIPT_LOCATION).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def downgrade(database_url: str, revision: str) -> None:
    """Take the database back to `revision`, for an operator rolling back a release. A revision
    that cannot be undone without losing data (0003) refuses with the way out instead. Blocking;
    call it outside a running event loop."""
    command.downgrade(_config(database_url), revision)
