"""What the rate-limit scenarios share: the plans, the environment (PostgreSQL, Redis, seeded
profiles, Keel processes placed on the service side's CPU), the report with its checks, and the
noisy-neighbour load that more than one scenario drives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from testkit.loadgen import (
    Connection,
    Result,
    Stream,
    auth_headers,
    run_in_another_process,
)
from testkit.ports import free_port
from testkit.processes import server
from testkit.servers.redis import RedisServer

from bench.harness import serve_cmd

REPO = Path(__file__).resolve().parents[2]
LIST_LIMIT = 50  # profiles per page of the list requests the spike and friendly scenarios send
RESULTS = REPO / "bench" / "results"
PROFILES = 10_000
# With 2+ CPUs the machine is split like a client and a server: the service side (Keel,
# PostgreSQL, Redis) on CPU 0, the load generator (and wrk) on the others, so that the figures
# are not those of a fight for the CPU between Keel and what loads it; on CPU 0, Keel runs at
# nice 10 under PostgreSQL and Redis. Set by `split_cpus`.
SERVICE_CPUS: set[int] = set()
NODE_PIDS: dict[int, int] = {}  # port -> pid of the Keel process (or of taskset/nice, which exec it)


def cpu_seconds(ports: Sequence[int]) -> float:
    """User + system CPU time of the Keel processes on these ports, from /proc."""
    total = 0.0
    for port in ports:
        fields = Path(f"/proc/{NODE_PIDS[port]}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


KEEL_CPUS: list[str] = []


def split_cpus() -> tuple[set[int], set[int]] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    SERVICE_CPUS.clear()
    SERVICE_CPUS.add(cpus[0])
    # Keel at a lower priority than PostgreSQL and Redis on the shared CPU: those would have
    # hosts of their own, where a reply never waits for Keel's turn on the CPU.
    KEEL_CPUS[:] = ["taskset", "-c", str(cpus[0]), "nice", "-n", "10"]
    return {cpus[0]}, set(cpus[1:])


def start_redis(redis: RedisServer) -> None:
    redis.start()
    if SERVICE_CPUS and redis.process is not None:
        os.sched_setaffinity(redis.process.pid, SERVICE_CPUS)


BENCH_QUOTA = 10  # per second, burst 10: the plan of the noisy-neighbour clients
ATOMIC_QUOTA = 100  # per ATOMIC_WINDOW_S: the `atomic` plan
ATOMIC_WINDOW_S = 60
ATOMIC_BURST = 10
PLANS: dict[str, Any] = {
    "standard": {"policies": [{"name": "burst", "quota": 100, "window_seconds": 1, "burst": 200}]},
    "anonymous": {"policies": [{"name": "burst", "quota": 10, "window_seconds": 1, "burst": 20}]},
    "bench": {
        "policies": [{"name": "burst", "quota": BENCH_QUOTA, "window_seconds": 1, "burst": 10}],
        "concurrency": 20,
    },
    "atomic": {
        "policies": [
            {
                "name": "minute",
                "quota": ATOMIC_QUOTA,
                "window_seconds": ATOMIC_WINDOW_S,
                "burst": ATOMIC_BURST,
            }
        ],
        "concurrency": 1000,  # the cap must not be what stops the 250 concurrent requests
    },
    "friendly": {
        "policies": [
            {"name": "burst", "quota": 10, "window_seconds": 1, "burst": 20},
            {"name": "minute", "quota": 300, "window_seconds": 60, "burst": 60},
        ],
        "concurrency": 5,
    },
    "unlimited": {
        "policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1, "burst": 10_000_000}],
        "concurrency": 100_000,
    },
}


@dataclass
class Check:
    name: str
    passed: bool
    figure: str


@dataclass
class Report:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, passed: bool, figure: str) -> None:
        self.checks.append(Check(name, passed, figure))
        print(f"  [{'PASS' if passed else 'FAIL'}] {name}: {figure}", flush=True)


# --------------------------------------------------------------------------- environment


@dataclass
class Environment:
    database_url: str
    redis: RedisServer
    ids: list[str]
    base_env: dict[str, str]
    logs: Path

    def keel_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a Keel process; an override of "" removes the variable."""
        env = {
            **self.base_env,
            "KEEL_DATABASE_URL": self.database_url,
            "KEEL_REDIS_URL": self.redis.url,
            "KEEL_RATELIMIT_PLANS": json.dumps(PLANS),
            "KEEL_RATELIMIT_NODES": "2",
            "KEEL_WORKERS": "1",  # each node one process, as measured before workers existed
            **overrides,
        }
        return {name: value for name, value in env.items() if value != ""}

    def keys(self, plan: str, count: int) -> list[str]:
        """`count` API keys on `plan`, created through Keel's service layer."""
        return asyncio.run(_issue_keys(self.keel_env(), plan, count))

    def random_read(self, token: str) -> Callable[[], tuple[str, str, bytes, bytes]]:
        headers = auth_headers(token)
        ids = self.ids
        return lambda: ("GET", f"/v1/profiles/{random.choice(ids)}", headers, b"")


async def _issue_keys(env: dict[str, str], plan: str, count: int) -> list[str]:
    from keel.bootstrap.lifecycle import build_services
    from keel.config import Settings
    from keel.domain.api_keys import Scope
    from keel.service.auth import issue_api_key

    settings = Settings(
        database_url=env["KEEL_DATABASE_URL"], ratelimit_plans=PLANS, redis_url=env["KEEL_REDIS_URL"]
    )
    keel = await build_services(settings)
    try:
        tokens = []
        for n in range(count):
            issued = await issue_api_key(
                keel.local.store,
                keel.local.clock,
                scopes=[Scope.PROFILES_READ],
                api_version="2026-11-28",
                name=f"{plan}-{n}",
                plan=plan,
            )
            tokens.append(issued.token)
        return tokens
    finally:
        await keel.close()


@contextlib.contextmanager
def keel_nodes(environment: Environment, count: int, name: str, **overrides: str) -> Iterator[list[int]]:
    """`count` Keel processes (one uvicorn worker each) on free loopback ports."""
    with _service_processes(environment, count, "keel", name, environment.keel_env(**overrides)) as ports:
        yield ports


@contextlib.contextmanager
def refusal_floor(environment: Environment, count: int) -> Iterator[list[int]]:
    """`count` processes of bench/refusal_floor_app.py, placed like Keel's."""
    with _service_processes(
        environment, count, "refusal_floor", "refusal-floor", environment.keel_env()
    ) as ports:
        yield ports


@contextlib.contextmanager
def _service_processes(
    environment: Environment, count: int, app: str, name: str, env: dict[str, str]
) -> Iterator[list[int]]:
    """`count` processes of `app` (see harness.serve_cmd) on the service side's CPU, on free
    loopback ports; their pids in NODE_PIDS for CPU accounting."""
    ports = [free_port() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for n, port in enumerate(ports):
            command = [*KEEL_CPUS, *serve_cmd(app, port)]
            log = environment.logs / f"{name}-{n}.log"
            process = stack.enter_context(server(f"{app} {name} {n}", command, env, log, port))
            NODE_PIDS[port] = process.pid
        yield ports


def flush_limits(environment: Environment) -> None:
    client = Redis.from_url(environment.redis.url)
    try:
        for key in client.scan_iter(match="keel:rl:*"):
            client.delete(key)
    finally:
        client.close()


def ok_results(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if 200 <= r.status < 300]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def good_streams(environment: Environment, ports: list[int], good: list[str]) -> list[Stream]:
    return [
        Stream(f"good-{n}", "read", ports, lambda t: BENCH_QUOTA / 2, environment.random_read(token))
        for n, token in enumerate(good)
    ]


def start_abuser(
    environment: Environment, ports: Sequence[int], abuser: str, duration: float
) -> Callable[[], list[Result]]:
    """The abuser, at 50x its quota, from a load generator process of its own (another client
    machine): from the well-behaved clients' event loop, its 500 requests a second of client-side
    work would show in their latencies. Niced, so that on a shared CPU it does not delay theirs."""
    stream = Stream("abuser", "read", ports, lambda t: BENCH_QUOTA * 50, environment.random_read(abuser))
    return run_in_another_process([stream], duration, nice=10)


def warm(environment: Environment, ports: list[int], tokens: list[str]) -> None:
    """One request per key and node: key caches, connection pools and code paths warmed."""

    async def warm() -> None:
        for port in ports:
            connection = await Connection.open(port)
            for token in tokens:
                await connection.request("GET", f"/v1/profiles/{environment.ids[0]}", auth_headers(token))
            connection.close()

    asyncio.run(warm())
