"""Where a cold start of `keel serve` goes, phase by phase, in one fresh interpreter: run by
`python -m bench.cold_start --phases` (once per round, each in a new process), which prints the
medians. Not a server: the app is driven in process (httpx's ASGI transport), so the socket and
uvicorn's own start are not in these figures, and the first request's figure includes httpx's
first use of that transport.

Environment: KEEL_DATABASE_URL (a migrated database), KEEL_COLD_START_TOKEN, KEEL_COLD_START_PATH.
Prints one `phase<TAB>milliseconds` line per phase."""

from __future__ import annotations

import time

_last = time.perf_counter()


def _lap(name: str) -> None:
    global _last
    now = time.perf_counter()
    print(f"{name}\t{(now - _last) * 1000:.1f}", flush=True)
    _last = now


import asyncio  # noqa: E402 - timed imports follow the clock's start
import os  # noqa: E402

import keel.cli  # noqa: E402, F401 - what `keel serve` imports first

_lap("import keel.cli")
from keel.bootstrap.lifecycle import create_app, preflight  # noqa: E402
from keel.config import Settings  # noqa: E402

_lap("import the composition root")


async def _served() -> None:
    import httpx

    app = create_app(settings)
    _lap("create_app")
    async with app.router.lifespan_context(app):
        _lap("start-up (lifespan)")
        headers = {"Authorization": f"Bearer {os.environ['KEEL_COLD_START_TOKEN']}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
            for name in ("first read", "second read"):
                response = await client.get(os.environ["KEEL_COLD_START_PATH"], headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text}")
                _lap(name)


settings = Settings()
asyncio.run(preflight(settings))
_lap("settings and preflight")
asyncio.run(_served())
