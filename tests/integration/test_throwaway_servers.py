"""The throwaway servers the chaos experiments start and stop: a Redis started twice must not
orphan the first process (a rollback's "start" after a restart did, and a Redis was left
running after a full chaos run), and a PostgreSQL killed with SIGKILL must start again and
keep what it committed (fsync on)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from testkit.servers.postgres import postgres_process
from testkit.servers.redis import RedisServer


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_starting_a_running_redis_again_orphans_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    assert server.process is not None
    first = server.process.pid
    try:
        server.start()  # what experiment 06's rollback does after its own restart
        assert server.process.pid == first
    finally:
        server.stop()
    assert not _alive(first)


async def _insert_and_count(url: str, value: int | None) -> int:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS t (v int)")
        if value is not None:
            await connection.execute("INSERT INTO t VALUES ($1)", value)
        return int(await connection.fetchval("SELECT count(*) FROM t"))
    finally:
        await connection.close()


def test_a_crashed_postgres_restarts_with_what_it_committed() -> None:
    with postgres_process(durable=True) as server:
        assert asyncio.run(_insert_and_count(server.url, 1)) == 1
        pids = server.pids()
        assert len(pids) > 1  # the postmaster and its background processes
        server.crash()
        assert not [pid for pid in pids if _alive(pid)]
        server.start()
        assert asyncio.run(_insert_and_count(server.url, None)) == 1
