"""The PostgreSQL plans of every profile filter, per storage layout (docs/layouts.md).

    python -m bench.layout_plans [--profiles 5000] [--layout document] [--layout normalized]

Starts a throwaway PostgreSQL (testkit), migrates one database per layout, stores `--profiles`
profiles (one in ten soft-deleted) through the repository itself, ANALYZEs, then prints, as
Markdown, `EXPLAIN (COSTS OFF)` of the exact statement the repository's `find` sends for each
filter: by id, by handle, by email, and a keyset page. Plans, not timings: nothing is measured.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.connection import LoggedQuery
from testkit.servers.postgres import postgres_server

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.domain.ids import new_profile_id
from keel.domain.profile import Email, Link, Profile, ProfileFields
from keel.observability.database import DatabaseObserver
from keel.observability.metrics import Metrics
from keel.observability.tracing import build_tracer_provider, tracer_from
from keel.service.ports import ProfileQuery, Store
from keel.storage.migrations.runner import migrate

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
BATCH = 500


def _profile(n: int) -> Profile:
    fields = ProfileFields(
        handle=f"user_{n:06d}",
        emails=(Email(f"u{n}@example.com", verified=True, primary=True), Email(f"alt.u{n}@example.org")),
        display_name=f"User {n}",
        locale="en-GB",
        links=(Link("site", f"https://u{n}.example"),),
        attributes={"plan": "pro" if n % 3 else "free", "score": n % 100},
    )
    profile = Profile.create(new_profile_id("eu1"), fields, NOW + timedelta(microseconds=n))
    return profile.delete(NOW + timedelta(seconds=1)) if n % 10 == 9 else profile


async def fill(store: Store, count: int) -> list[Profile]:
    """`count` profiles (one in ten soft-deleted) stored through the repository, in batches."""
    profiles = [_profile(n) for n in range(count)]
    for start in range(0, count, BATCH):
        async with store.unit_of_work() as uow:
            for profile in profiles[start : start + BATCH]:
                await uow.profiles.add(profile)
            await uow.commit()
    return profiles


async def _statement(store: Store, query: ProfileQuery) -> tuple[str, tuple[Any, ...]]:
    """The one statement `find` sends for `query`, as asyncpg sends it."""
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def logged(record: LoggedQuery) -> None:
        sent.append((record.query, tuple(record.args)))

    async with store.unit_of_work(read_only=True) as uow:
        with uow._connection.query_logger(logged):  # type: ignore[attr-defined]  # its own connection
            await uow.profiles.find(query)
    [statement] = sent
    return statement


async def open_bench_store(url: str, layout: str) -> Store:
    """Keel's store on a migrated database, with metrics and tracing that go nowhere."""
    provider = build_tracer_provider(
        exporter="none", sampling_ratio=1.0, otlp_endpoint=None, service_name="b"
    )
    observer = DatabaseObserver(Metrics(), tracer_from(provider), "postgresql")
    return await open_store(Settings(database_url=url, storage_layout=layout), observer)


async def _plans(url: str, layout: str, count: int) -> str:
    store = await open_bench_store(url, layout)
    try:
        profiles = await fill(store, count)
        live = [p for p in profiles if p.deleted_at is None]
        middle = sorted(live, key=lambda p: p.id)[len(live) // 2]
        filters = {
            "by id": ProfileQuery(limit=1, ids=(middle.id,)),
            "by ids (a batch of 3)": ProfileQuery(limit=3, ids=tuple(p.id for p in live[:3])),
            "by handle": ProfileQuery(limit=1, handle=middle.handle),
            "by email": ProfileQuery(limit=1, email=middle.fields.emails[1].normalized),
            "list: first page": ProfileQuery(limit=50),
            "list: next page (keyset)": ProfileQuery(limit=50, after_id=middle.id),
        }
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("ANALYZE")
            sections = [f"### {layout} layout, {count} profiles ({count // 10} soft-deleted)\n"]
            for name, query in filters.items():
                sql, args = await _statement(store, query)
                plan = "\n".join(
                    row[0] for row in await connection.fetch("EXPLAIN (COSTS OFF) " + sql, *args)
                )
                sections.append(f"{name}:\n\n```\n{plan}\n```\n")
        finally:
            await connection.close()
    finally:
        await store.close()
    return "\n".join(sections)


async def make_database(server_url: str, name: str, layout: str) -> str:
    """A new database on the server, migrated for `layout`: its URL."""
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(migrate, url, layout=layout)
    return url


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=5000)
    parser.add_argument("--layout", action="append", choices=["normalized", "document"])
    args = parser.parse_args()
    with postgres_server() as server_url:
        for layout in args.layout or ["document", "normalized"]:
            url = await make_database(server_url, f"plans_{layout}", layout)
            print(await _plans(url, layout, args.profiles))


if __name__ == "__main__":
    asyncio.run(main())
