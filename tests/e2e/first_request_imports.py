"""`python tests/e2e/first_request_imports.py DATABASE_URL API_KEY`: build Keel's ASGI
application as `keel serve` does, run its start-up, then serve its first requests (`/healthz`,
a profile read refused for want of a key, and one with the key), and print as JSON the modules
each first request imported. An import on a request runs on the event loop while every
other request waits (anyio's asyncio backend, imported by the router's first timeout scope, held
the first `/healthz` for 60 ms); start-up is the place for them. Run in a fresh interpreter:
the test process has long imported everything."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import MutableMapping
from typing import Any

from keel.bootstrap.lifecycle import create_app
from keel.config import Settings

Message = MutableMapping[str, Any]


async def _first_requests(database_url: str, token: str) -> dict[str, list[str]]:
    app = create_app(Settings(database_url=database_url, log_level="warning"))
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    state: dict[str, Any] = {}
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"start-up failed: {started}")
    imported: dict[str, list[str]] = {}
    for path, headers in (
        ("/healthz", []),
        ("/v1/profiles/0000000000000000000000", []),
        ("/v1/profiles/0000000000000000000000", [(b"authorization", f"Bearer {token}".encode())]),
    ):
        before = set(sys.modules)
        status = await _get(app, path, headers, state)
        imported[f"{path} ({status})"] = sorted(set(sys.modules) - before)
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan
    return imported


async def _get(app: Any, path: str, headers: list[tuple[bytes, bytes]], state: dict[str, Any]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),
    }
    sent: list[Message] = []
    request_read = False

    async def receive() -> Message:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the answer is written
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_first_requests(sys.argv[1], sys.argv[2]))))
