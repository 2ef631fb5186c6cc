"""Baseline for bench/rest_read.py: the least a FastAPI + asyncpg service must do to serve
`GET /v1/profiles/{id}` from Keel's schema, as lean as a fair comparison allows:
- one query, the same SQL text as Keel's PostgreSQL adapter;
- the same pool as Keel's (size 2-10, 5 s command timeout) *including its reset hook*: Keel's pool
  skips asyncpg's default reset (UNLISTEN, RESET ALL, ... on every release), one round trip per
  request, so the baseline must skip it too or it pays a round trip Keel does not;
- the document written directly, as Keel writes it (`json.dumps` into a `Response`, what
  Starlette's JSONResponse does), not through FastAPI's serializer (`jsonable_encoder` on a
  returned dict).
No auth, versioning, metrics, logs or traces: what those cost is what the benchmark measures.

Deliberately imports nothing from keel. Run: `KEEL_DATABASE_URL=postgresql://... uvicorn
bench.baseline_app:app --loop uvloop --http httptools --no-access-log --port 8001`
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
from fastapi import FastAPI, Request, Response

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


async def _keep_session(connection: asyncpg.Connection) -> None:
    """As keel.storage.postgres.store._keep_session: no reset round trip on release."""


def _timestamp(value: datetime) -> str:
    """As keel.api.rest.mapping.timestamp: RFC 3339 in UTC with microseconds and a `Z`."""
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Keel's pool, as PostgresStore.open creates it with Keel's defaults (db_pool_min/max,
    # db_command_timeout_seconds, reset hook).
    app.state.pool = await asyncpg.create_pool(
        os.environ["KEEL_DATABASE_URL"],
        min_size=2,
        max_size=10,
        command_timeout=5.0,
        reset=_keep_session,
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


_NOT_FOUND = b'{"title":"Not Found","status":404}'


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@app.get("/v1/profiles/{profile_id}")
async def get_profile(profile_id: str, request: Request) -> Response:
    row = await request.app.state.pool.fetchrow(_SELECT_PROFILE, profile_id)
    if row is None:
        return Response(_NOT_FOUND, status_code=404, media_type="application/problem+json")
    attributes = row["attributes"]
    document = {
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
        "created_at": _timestamp(row["created_at"]),
        "updated_at": _timestamp(row["updated_at"]),
    }
    body = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/json")
