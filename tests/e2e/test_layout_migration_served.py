"""`keel layout migrate` against a served Keel on PostgreSQL under the failure-testing workload:
a few thousand profiles, the migrator killed with SIGKILL in the middle of its backfill and run
again, and then the workload's history checker over the final rows: nothing acknowledged lost
or applied twice, no server error, and the profiles in the other layout. The direction follows
the test run's layout (`KEEL_STORAGE_LAYOUT`): from it, to the other one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from testkit.history import History, check
from testkit.ports import free_port
from testkit.workload import final_state, run_workload

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.storage.layouts import Layout
from keel.storage.migrations.runner import migrate
from tests.conftest import environment_layout
from tests.e2e.test_served_process import _keel
from tests.e2e.test_workload import Server
from tests.integration.conftest import observer
from tests.integration.test_key_verifier_migration import _fresh_postgres_database
from tests.integration.test_repository_contract import make_profile

PROFILES = 3000
KILL_AFTER_COPIED = 600  # profiles the first migrator run copies before its SIGKILL


async def seed(url: str, layout: Layout, count: int) -> None:
    store = await open_store(Settings(database_url=url, storage_layout=layout.value), observer("seed"))
    try:
        for start in range(0, count, 250):
            async with store.unit_of_work() as uow:
                for n in range(start, min(start + 250, count)):
                    await uow.profiles.add(make_profile(handle=f"seed_{n:05d}", email=f"seed{n}@example.com"))
                await uow.commit()
    finally:
        await store.close()


async def progress(url: str) -> tuple[str, int] | None:
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT phase, done FROM storage_layout_progress WHERE name = 'profiles'"
        )
    finally:
        await connection.close()
    return (row["phase"], row["done"]) if row is not None else None


async def layout_gauges(base_url: str, until: dict[str, float]) -> dict[str, float]:
    """The node's layout gauges from /metrics, read again (every 0.2 s, for at most 15 s: the
    node reads the record every 2 s) until they hold `until`; what they held last."""
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while True:
            text = (await client.get("/metrics")).text
            seen = {
                sample.name + "".join(f"{{{value}}}" for value in sample.labels.values()): sample.value
                for family in text_string_to_metric_families(text)
                if family.name.startswith("keel_layout")
                for sample in family.samples
            }
            if all(seen.get(name) == value for name, value in until.items()) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.2)


def migrator(env: dict[str, str], target: Layout, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "keel", "layout", "migrate", "--to", target.value, *extra],
            env=env,
            stdout=out,
            stderr=out,
        )


async def test_a_migration_killed_midway_and_resumed_under_live_traffic_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    source = Layout(environment_layout())
    target = Layout.DOCUMENT if source is Layout.NORMALIZED else Layout.NORMALIZED
    url = await _fresh_postgres_database(postgres_url, f"keel_layout_served_{source}")
    await asyncio.to_thread(migrate, url, layout=source.value)
    await seed(url, source, PROFILES)
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": url,
        "KEEL_STORAGE_LAYOUT": source.value,
        "KEEL_PORT": str(free_port()),
        "KEEL_ACCESS_LOG": "false",
        "KEEL_RATELIMIT_ENABLED": "false",
    }
    token = _keel(env, "keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").strip()
    server = Server(env, f"http://127.0.0.1:{env['KEEL_PORT']}", token, url, tmp_path / "keel.log")
    first_log, second_log = tmp_path / "migrate-1.log", tmp_path / "migrate-2.log"
    history = History()
    migration_done = asyncio.Event()

    async def traffic() -> int:
        """Short workload runs back to back (one history) until the migration has finished,
        then one more: traffic before the kill, across it, through every phase and after."""
        runs = 0
        while True:
            finished = migration_done.is_set()
            await run_workload(
                server.base_url,
                token,
                clients=4,
                duration_s=1.5,
                seed=17 + runs,
                request_timeout_s=3.0,
                history=history,
                create_grace_s=3.0,
            )
            runs += 1
            if finished:
                return runs

    async def migration() -> tuple[tuple[str, int], str]:
        try:
            # A slow budget, so the kill lands in the middle of the backfill.
            first = migrator(env, target, first_log, "--rows-per-second", "400", "--batch", "100")
            deadline = time.monotonic() + 60
            while (
                (state := await progress(url)) is None
                or state[0] != "backfill"
                or state[1] < KILL_AFTER_COPIED
            ):
                assert first.poll() is None, first_log.read_text()
                assert time.monotonic() < deadline, (state, first_log.read_text())
                await asyncio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            killed_at = await progress(url)
            assert killed_at is not None
            # The serving node publishes the phase and the progress it reads in the database.
            expected = {
                "keel_layout_phase{backfill}": 1.0,
                "keel_layout_phase{steady}": 0.0,
                f"keel_layout_reads{{{source}}}": 1.0,
                "keel_layout_migration_done_profiles": float(killed_at[1]),
            }
            gauges = await layout_gauges(server.base_url, expected)
            assert {name: gauges.get(name) for name in expected} == expected, gauges
            assert gauges["keel_layout_migration_covered_profiles"] >= PROFILES, gauges
            second = migrator(env, target, second_log, "--batch", "200")
            returncode = await asyncio.to_thread(second.wait, 180)
            assert returncode == 0, second_log.read_text()
            return killed_at, second_log.read_text()
        finally:
            migration_done.set()

    server.start()
    try:
        runs, (killed_at, resumed_output) = await asyncio.gather(traffic(), migration())
    finally:
        server.stop()

    # Killed in the middle of the backfill; the second run went on from there, not from the start.
    assert killed_at[0] == "backfill", killed_at
    assert KILL_AFTER_COPIED <= killed_at[1] < PROFILES, killed_at
    first_backfill = next(line for line in resumed_output.splitlines() if line.startswith("backfill"))
    resumed_from = int(first_backfill.split("] ")[1].split("/")[0])
    assert killed_at[1] < resumed_from <= killed_at[1] + 200, (killed_at, first_backfill)
    assert f"finished: profiles live in the {target} layout" in resumed_output

    # The history checker over the rows the database now reads (the target layout's).
    report = check(history, await final_state(url))
    assert report.ok, report.summary()
    assert runs >= 2
    for f in ("create", "update", "read"):
        assert report.counts[f]["ok"] > 20, report.summary()
    server_errors = [op for op in history.ops if int(op.value.get("status", 0)) >= 500]
    assert server_errors == [], server_errors[:5]
    status = _keel(env, "layout", "status")
    assert f"read layout: {target}\nphase: steady\n" in status, status
