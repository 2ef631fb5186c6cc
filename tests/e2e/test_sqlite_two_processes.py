"""Two `keel serve` processes on one SQLite file, as an operator may run them (two workers behind
one proxy): each serializes its own writes with its lock, and the two meet in SQLite's
`BEGIN IMMEDIATE` + busy_timeout. Concurrent writes from both: every write is acknowledged or
refused with a 503 + Retry-After (never a 500), and every acknowledged write is there, seen
from either process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from testkit.health import wait_healthy
from testkit.ports import free_port

from tests.e2e.test_served_process import _keel

PER_PROCESS = 60
IN_FLIGHT = 10  # per process


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str]]:
    directory = tmp_path_factory.mktemp("two-processes")
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{directory / 'keel.sqlite3'}",
        # Only the database may refuse a write here: no rate limit, no load shedding.
        "KEEL_RATELIMIT_ENABLED": "false",
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
    }
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").strip()
    processes: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for n in range(2):
            process_env = {**env, "KEEL_PORT": str(free_port())}
            log_path = directory / f"keel-{n}.log"
            with log_path.open("w") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "keel", "serve"], env=process_env, stdout=log, stderr=log
                    )
                )
            url = f"http://127.0.0.1:{process_env['KEEL_PORT']}"
            wait_healthy(url, processes[-1], log_path)
            urls.append(url)
        yield urls, token
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)


async def write_from(url: str, token: str, process: int) -> list[tuple[int, httpx.Response]]:
    limit = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Authorization": f"Bearer {token}"}

    async def create(client: httpx.AsyncClient, n: int) -> tuple[int, httpx.Response]:
        document = {
            "handle": f"p{process}_user_{n:03d}",
            "emails": [{"address": f"p{process}.{n}@example.com", "primary": True}],
            "display_name": f"written by process {process}",
        }
        async with limit:
            return n, await client.post("/v1/profiles", json=document, headers=headers)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(create(client, n) for n in range(PER_PROCESS)))


async def test_concurrent_writes_from_two_processes_are_all_kept_and_never_a_500(
    two_processes: tuple[list[str], str],
) -> None:
    urls, token = two_processes
    results = await asyncio.gather(*(write_from(url, token, p) for p, url in enumerate(urls)))
    acknowledged: list[dict[str, Any]] = []
    for process, answers in enumerate(results):
        statuses = [response.status_code for _, response in answers]
        assert set(statuses) <= {201, 503}, statuses
        for _, response in answers:
            if response.status_code == 503:
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["Retry-After"]) >= 1
            else:
                acknowledged.append(response.json())
        assert 201 in statuses, f"process {process} acknowledged no write at all"

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for profile in acknowledged:
            # Each write seen from both processes, as it was acknowledged.
            for url in urls:
                read = await client.get(f"{url}/v1/profiles/{profile['id']}", headers=headers)
                assert read.status_code == 200, read.text
                assert read.json() == profile
        listed: set[str] = set()
        path: str | None = "/v1/profiles?limit=100"
        for _ in range(2 * PER_PROCESS):  # pages of 100: bounded by count
            if path is None:
                break
            page = (await client.get(f"{urls[0]}{path}", headers=headers)).json()
            listed |= {p["id"] for p in page["items"]}
            path = page["links"]["next"]  # the key is the CLI's: the newest version
    assert {p["id"] for p in acknowledged} <= listed
