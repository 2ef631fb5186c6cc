"""The management port's probes run on the event loop, bounded: a loop that does not run them
within the bound fails both (503), as the API port's probes would, which could not answer at
all. A loop that runs fails neither."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, cast

from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import management_probes


class _Ready:
    """What `readiness_report` reads of the services."""

    def __init__(self) -> None:
        self.probes: dict[str, Any] = {}
        self.breakers: dict[str, Any] = {}

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return True, {"database": "ok"}


def _loop_in_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


async def _settle() -> None:
    """Let the probes' cancelled tasks finish their cancellation."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    asyncio.run_coroutine_threadsafe(_settle(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_a_running_loop_answers_both_probes() -> None:
    loop, thread = _loop_in_thread()
    try:
        probes = management_probes(cast(Services, _Ready()), loop)
        assert probes["/healthz"]() == (200, b'{"status": "ok"}')
        status, body = probes["/readyz"]()
        assert status == 200
        assert json.loads(body) == {"status": "ready", "checks": {"database": "ok"}, "breakers": {}}
    finally:
        _stop(loop, thread)


def test_a_stalled_loop_fails_both_probes() -> None:
    loop, thread = _loop_in_thread()
    release = threading.Event()
    # The loop's thread blocks in a callback until released: nothing else runs on it meanwhile.
    loop.call_soon_threadsafe(release.wait)
    try:
        probes = management_probes(cast(Services, _Ready()), loop)
        assert probes["/healthz"]() == (503, b'{"status": "unresponsive"}')
        status, body = probes["/readyz"]()
        assert status == 503
        assert json.loads(body)["checks"] == {"event_loop": "unresponsive"}
    finally:
        release.set()
        _stop(loop, thread)
