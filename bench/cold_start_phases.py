"""Where a cold start of `keel serve` goes, phase by phase, in one fresh interpreter: run by
`python -m bench.cold_start --phases` (once per round, each in a new process), which prints the
medians. Not a server: the app is driven in process, its lifespan through the app itself as
uvicorn sends it (Cadwyn generates its versioned routes, and Starlette builds its middleware
stack, on the app's first call, which is the lifespan's), then reads through httpx's ASGI
transport; the socket and uvicorn's own start are not in these figures, and the first read's
figure includes httpx's first use of that transport.

Environment: KEEL_DATABASE_URL (a migrated database), KEEL_COLD_START_TOKEN, KEEL_COLD_START_PATH.
Prints one `phase<TAB>milliseconds` line per phase. With KEEL_COLD_START_MODULES set, also a
`modules<TAB>a,b,...` line: the third-party packages (top-level names) imported once start-up is
complete, before this script imports its own client (httpx), for `bench.cold_start --floor`."""

from __future__ import annotations

import time
from typing import Any

_last = time.perf_counter()


def _lap(name: str) -> None:
    global _last
    now = time.perf_counter()
    print(f"{name}\t{(now - _last) * 1000:.1f}", flush=True)
    _last = now


import asyncio  # noqa: E402 - timed imports follow the clock's start
import os  # noqa: E402
import sys  # noqa: E402

import keel.cli  # noqa: E402, F401 - what `keel serve` imports first

_lap("import keel.cli")
from keel.bootstrap.lifecycle import create_app, preflight  # noqa: E402
from keel.config import Settings  # noqa: E402

_lap("import the composition root")


def _third_party_modules() -> list[str]:
    names = {name.partition(".")[0] for name in sys.modules}
    return sorted(
        name
        for name in names
        if name not in sys.stdlib_module_names and name != "keel" and not name.startswith("_")
    )


async def _served() -> None:
    app = create_app(settings)
    _lap("create_app")
    events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"start-up failed: {message}")

    await events.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, events.get, send))
    await started.wait()
    _lap("start-up (lifespan, as uvicorn sends it)")
    if os.environ.get("KEEL_COLD_START_MODULES"):
        print(f"modules\t{','.join(_third_party_modules())}", flush=True)
    import httpx  # the driver's own client, after the figures of Keel's start

    headers = {"Authorization": f"Bearer {os.environ['KEEL_COLD_START_TOKEN']}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        for name in ("first read", "second read"):
            response = await client.get(os.environ["KEEL_COLD_START_PATH"], headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text}")
            _lap(name)
    await events.put({"type": "lifespan.shutdown"})
    await lifespan


settings = Settings()
asyncio.run(preflight(settings))
_lap("settings and preflight")
asyncio.run(_served())
