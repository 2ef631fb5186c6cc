"""How the SQLite adapter stores times: one fixed text format (UTC, microseconds always present)
so that comparing the text compares the times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(value: Any) -> datetime:
    return datetime.fromisoformat(value)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def iso_or_none(value: datetime | None) -> str | None:
    return iso(value) if value is not None else None
