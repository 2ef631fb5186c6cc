"""How every protocol writes an instant as text (REST and GraphQL documents alike)."""

from __future__ import annotations

from datetime import UTC, datetime


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. `2026-11-28T12:00:00.000000Z`: one fixed width."""
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")
