"""Bench profiles written straight to PostgreSQL, many thousands at once: what benchmarks and
chaos experiments read."""

from __future__ import annotations

import asyncpg

from keel.domain.ids import new_ulid

SAMPLED_IDS = 10_000

SEED_SQL = [
    # $1: ids, $2: offset for the handle/email number (so a re-run on a kept database adds, not clashes)
    """INSERT INTO profiles (id, handle, display_name, bio, avatar_url, locale, timezone, attributes,
                             version, created_at, updated_at, deleted_at)
       SELECT t.id, 'bench_' || (t.n + $2), 'Bench ' || (t.n + $2), NULL, NULL, 'en-GB', 'Europe/London',
              '{"plan":"free"}'::jsonb, 1, now(), now(), NULL
         FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)""",
    """INSERT INTO profile_emails (profile_id, position, address, address_normalized, verified,
                                   is_primary, live)
       SELECT t.id, 0, 'bench.' || (t.n + $2) || '@example.com', 'bench.' || (t.n + $2) || '@example.com',
              true, true, true
         FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)""",
    """INSERT INTO profile_links (profile_id, position, kind, url)
       SELECT t.id, 0, 'website', 'https://example.com/bench/' || (t.n + $2)
         FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)""",
]
BENCH_ROWS = "FROM profiles WHERE handle LIKE 'bench\\_%' AND deleted_at IS NULL"


async def seed_profiles(url: str, count: int, region: str) -> tuple[int, list[str]]:
    """Make sure `count` bench profiles exist; return (how many were inserted, sampled ids)."""
    conn = await asyncpg.connect(url, timeout=30, command_timeout=600)
    try:
        existing = await conn.fetchval(f"SELECT count(*) {BENCH_ROWS}")
        missing = max(0, count - existing)
        if missing:
            ids = [f"{region}_{new_ulid()}" for _ in range(missing)]
            async with conn.transaction():
                for sql in SEED_SQL:
                    await conn.execute(sql, ids, existing)
            await conn.execute("ANALYZE profiles, profile_emails, profile_links")
        sample = await conn.fetch(f"SELECT id {BENCH_ROWS} ORDER BY random() LIMIT $1", SAMPLED_IDS)
        return missing, [r["id"] for r in sample]
    finally:
        await conn.close()


TO_DOCUMENTS = [
    # The document layout's rows built from the normalized layout's (what `keel layout migrate`
    # would write, in one statement each): for benchmarks that need both layouts quickly.
    """INSERT INTO profile_documents (id, document, version, deleted_at)
SELECT p.id, jsonb_build_object(
    'handle', p.handle,
    'emails', coalesce((SELECT jsonb_agg(jsonb_build_object('address', e.address, 'verified', e.verified,
                                                            'primary', e.is_primary) ORDER BY e.position)
                        FROM profile_emails e WHERE e.profile_id = p.id), '[]'::jsonb),
    'display_name', p.display_name, 'bio', p.bio, 'avatar_url', p.avatar_url, 'locale', p.locale,
    'timezone', p.timezone,
    'links', coalesce((SELECT jsonb_agg(jsonb_build_object('kind', l.kind, 'url', l.url) ORDER BY l.position)
                       FROM profile_links l WHERE l.profile_id = p.id), '[]'::jsonb),
    'attributes', p.attributes,
    'created_at', to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
    'updated_at', to_char(p.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')),
  p.version, p.deleted_at
FROM profiles p""",
    """INSERT INTO profile_document_emails (address_normalized, profile_id)
SELECT address_normalized, profile_id FROM profile_emails WHERE live""",
]


async def copy_into_documents(connection: asyncpg.Connection) -> None:
    """Copy every profile of the normalized layout into the document layout's tables."""
    for sql in TO_DOCUMENTS:
        await connection.execute(sql)
