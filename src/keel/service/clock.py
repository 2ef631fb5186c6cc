from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """Wall-clock time in UTC; tests use a settable clock implementing the same `Clock` port."""

    def now(self) -> datetime:
        return datetime.now(UTC)
