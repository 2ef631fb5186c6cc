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
