"""The wait of a background loop (the outbox relay, the webhook dispatcher): until a commit in
this process wakes it, or the poll interval has passed for commits of other processes."""

from __future__ import annotations

import asyncio
import contextlib


async def woken_or_polled(wake: asyncio.Event, poll_seconds: float) -> None:
    """Return when `wake` is set or after `poll_seconds`, whichever comes first; `wake` is
    cleared either way, so a wake-up that came during the caller's pass is not lost (it was
    seen by this wait) and not counted twice."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(poll_seconds):
            await wake.wait()
    wake.clear()
