"""Baseline for bench/cold_start.py: a bare FastAPI app that serves `GET /v1/profiles/{id}` from
the same SQLite database as Keel (one aiosqlite connection, opened at start-up, one query). What
a process must at least import and do before its first read; no auth, versioning, metrics, logs
or traces. Deliberately imports nothing from keel. `KEEL_COLD_START_DB`: the SQLite file."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
from fastapi import FastAPI, Response


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.db = await aiosqlite.connect(os.environ["KEEL_COLD_START_DB"])
    try:
        yield
    finally:
        await app.state.db.close()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/profiles/{profile_id}")
async def get_profile(profile_id: str) -> Response:
    async with app.state.db.execute(
        "SELECT id, handle, display_name FROM profiles WHERE id = ? AND deleted_at IS NULL", (profile_id,)
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return Response(status_code=404)
    return Response(f'{{"id":"{row[0]}","handle":"{row[1]}"}}', media_type="application/json")
