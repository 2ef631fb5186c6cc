"""Baseline for bench/rest_read.py: the least a FastAPI + asyncpg service must do to serve
`GET /v1/profiles/{id}` from Keel's schema. One query (the same SQL text as Keel's PostgreSQL
adapter), a dict, FastAPI's default JSONResponse. No auth, versioning, metrics, logs or traces.

Deliberately imports nothing from keel. Run: `KEEL_DATABASE_URL=postgresql://... uvicorn
bench.baseline_app:app --loop uvloop --http httptools --no-access-log --port 8001`
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request

# Copied from keel.storage.postgres.store._SELECT_PROFILE (PROFILE_COLUMNS expanded), plus the
# WHERE clause PostgresProfiles.get appends.
_SELECT_PROFILE = """
SELECT id, handle, display_name, bio, avatar_url, locale, timezone, attributes, version, created_at, updated_at, deleted_at,
  (SELECT coalesce(json_agg(json_build_array(e.address, e.verified, e.is_primary) ORDER BY e.position),
                   '[]'::json)::text
     FROM profile_emails e WHERE e.profile_id = p.id),
  (SELECT coalesce(json_agg(json_build_array(l.kind, l.url) ORDER BY l.position), '[]'::json)::text
     FROM profile_links l WHERE l.profile_id = p.id)
FROM profiles p
 WHERE p.id = $1 AND p.deleted_at IS NULL"""  # noqa: E501


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Same pool settings as Keel's defaults (db_pool_min/max, db_command_timeout_seconds).
    app.state.pool = await asyncpg.create_pool(
        os.environ["KEEL_DATABASE_URL"], min_size=2, max_size=10, command_timeout=5.0
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/profiles/{profile_id}")
async def get_profile(profile_id: str, request: Request) -> dict[str, Any]:
    row = await request.app.state.pool.fetchrow(_SELECT_PROFILE, profile_id)
    if row is None:
        raise HTTPException(404, "No such profile.")
    attributes = row["attributes"]
    return {
        "id": row["id"],
        "handle": row["handle"],
        "emails": [{"address": a, "verified": v, "primary": p} for a, v, p in json.loads(row[12])],
        "display_name": row["display_name"],
        "bio": row["bio"],
        "avatar_url": row["avatar_url"],
        "locale": row["locale"],
        "timezone": row["timezone"],
        "links": [{"kind": k, "url": u} for k, u in json.loads(row[13])],
        "attributes": json.loads(attributes) if isinstance(attributes, str) else attributes,
        "version": row["version"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
