"""The system under test: PostgreSQL (durable: fsync and synchronous commits on) and, when asked,
Redis, each behind a fault proxy, and NATS with JetStream (stopped and started as a whole, the
relay's outage), and one Keel process talking to them through the proxies; or,
split, a Keel core (REST and gRPC) and an edge in front of it that reaches the core's gRPC port
through a fault proxy of its own ("core"). The traffic goes to the edge.

Everything that waits on a process runs in a thread: the traffic shares this event loop, and a
blocked loop would be a fault of its own. The fault proxies run in processes of their own: in
this loop, a burst of traffic delayed what they forwarded (see `testkit.faultproxy_process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from testkit import process_faults
from testkit.faultproxy import Faults
from testkit.faultproxy_process import FaultProxyProcess
from testkit.health import wait_healthy
from testkit.ports import free_port
from testkit.processes import REPO, keel_cmd, keel_output, start_session, stop
from testkit.servers.nats import NatsServer
from testkit.servers.postgres import PostgresProcess, postgres_process
from testkit.servers.redis import RedisServer

from keel.storage.migrations.runner import migrate


class System:
    def __init__(
        self, keel_env: dict[str, str], *, redis: bool, seed: int, split: bool = False, nats: bool = False
    ) -> None:
        self._keel_env = keel_env
        self._with_redis = redis
        self._with_nats = nats
        self.nats: NatsServer | None = None
        self._split = split
        self.core: subprocess.Popen[bytes] | None = None
        self.core_port = free_port()
        self.core_grpc_port = free_port()
        self._edge_token = ""
        self._seed = seed
        self._stack = contextlib.ExitStack()
        self._workdir = Path(tempfile.mkdtemp(prefix="keel-chaos-"))
        self.keel_log = self._workdir / "keel.log"
        self.proxies: dict[str, FaultProxyProcess] = {}
        self.keel: subprocess.Popen[bytes] | None = None
        self.keel_port = free_port()
        self.redis: RedisServer | None = None
        self.token = ""
        self.spawned: list[int] = []  # every server pid started, see `_note_servers`

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.keel_port}"

    @property
    def database_url(self) -> str:
        """Straight to PostgreSQL, past the proxy: for set-up and for reading the final state."""
        return self.postgres.url

    async def __aenter__(self) -> System:
        try:
            return await self._start()
        except BaseException:
            # `async with` calls __aexit__ only after __aenter__ returned: whatever started
            # before a failure (or a Ctrl-C) during start-up is stopped here.
            await self.__aexit__(None, None, None)
            raise

    async def _start(self) -> System:
        self.postgres: PostgresProcess = await asyncio.to_thread(
            self._stack.enter_context, postgres_process(durable=True)
        )
        self._note_servers()
        await asyncio.to_thread(migrate, self.postgres.url)
        self.proxies["postgres"] = await self._proxy(self.postgres.port)
        if self._with_redis:
            (self._workdir / "redis").mkdir()
            self.redis = RedisServer(self._workdir / "redis")
            await asyncio.to_thread(self.redis.start)
            self._note_servers()
            self.proxies["redis"] = await self._proxy(self.redis.port)
        if self._with_nats:
            (self._workdir / "nats").mkdir()
            self.nats = NatsServer(self._workdir / "nats")
            await asyncio.to_thread(self.nats.start)
            self._note_servers()
        self.token = await asyncio.to_thread(self._issue_key, "profiles:read,profiles:write")
        if self._split:
            self._edge_token = await asyncio.to_thread(self._issue_key, "edge")
            self.proxies["core"] = await self._proxy(self.core_grpc_port)
            await self.start_core()
        await self.start_keel()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop every server, each even if stopping another failed; runs on failures and on
        Ctrl-C too (the servers run in sessions of their own, so a terminal's SIGINT reaches
        only the runner, which stops them here)."""
        steps: list[Callable[[], Awaitable[object]]] = []
        if self.keel is not None:
            steps.append(functools.partial(asyncio.to_thread, stop, self.keel))
        if self.core is not None:
            steps.append(functools.partial(asyncio.to_thread, stop, self.core))
        steps += [functools.partial(asyncio.to_thread, proxy.stop) for proxy in self.proxies.values()]
        if self.redis is not None:
            steps.append(functools.partial(asyncio.to_thread, self.redis.stop))
        if self.nats is not None:
            steps.append(functools.partial(asyncio.to_thread, self.nats.stop))
        steps.append(functools.partial(asyncio.to_thread, self._stack.close))
        errors: list[BaseException] = []
        for step in steps:
            try:
                # Shielded: a second Ctrl-C must not leave a server running.
                await asyncio.shield(step())
            except (Exception, asyncio.CancelledError) as error:  # noqa: BLE001 - reported; the other servers must still stop
                errors.append(error)
        if errors:
            print(f"  stopping the system: {errors!r}", flush=True)
        if os.environ.get("KEEL_CHAOS_KEEP") is None:
            await asyncio.to_thread(shutil.rmtree, self._workdir, True)
        else:
            print(f"  kept {self._workdir} (Keel's log is keel.log)", flush=True)

    # -- Keel ------------------------------------------------------------------------------

    async def start_keel(self) -> None:
        """Keel, or in a split system the edge, on `keel_port`: what the traffic talks to."""
        env = {**os.environ, **self._keel_env, **self._wiring()}
        command = keel_cmd("serve", "--host", "127.0.0.1", "--port", str(self.keel_port))
        if self._split:
            command += ["--core", f"grpc://127.0.0.1:{self.proxies['core'].port}"]
            env["KEEL_CORE_API_KEY"] = self._edge_token
        self.keel = self._spawn(command, env)
        self._note_servers()
        await self._wait_healthy(self.keel, self.base_url)

    async def start_core(self) -> None:
        env = {**os.environ, **self._keel_env, **self._wiring(), "KEEL_GRPC_PORT": str(self.core_grpc_port)}
        command = keel_cmd("serve", "--host", "127.0.0.1", "--port", str(self.core_port))
        self.core = self._spawn(command, env)
        self._note_servers()
        await self._wait_healthy(self.core, f"http://127.0.0.1:{self.core_port}")

    def running(self) -> list[str]:
        """What runs, for the log: each server's name and pid."""
        named = [("keel", self.keel), ("core", self.core)]
        running = [f"{name} {process.pid}" for name, process in named if process is not None]
        if self.redis is not None and self.redis.process is not None:
            running.append(f"redis {self.redis.process.pid}")
        if self.nats is not None and self.nats.process is not None:
            running.append(f"nats {self.nats.process.pid}")
        running += [f"postgres {pid}" for pid in self.postgres.pids()[:1]]
        return running

    def _note_servers(self) -> None:
        """Remember every server process started, restarts included: after the experiment none
        may be left (a lost reference, like a replaced Redis, is how one is orphaned)."""
        pids = [p.pid for p in (self.keel, self.core) if p is not None]
        pids += [proxy.pid for proxy in self.proxies.values() if proxy.pid is not None]
        if self.redis is not None and self.redis.process is not None:
            pids.append(self.redis.process.pid)
        if self.nats is not None and self.nats.process is not None:
            pids.append(self.nats.process.pid)
        if hasattr(self, "postgres"):
            pids += self.postgres.pids()[:1]
        self.spawned += [pid for pid in pids if pid not in self.spawned]

    def _spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.keel_log.open("ab") as log:
            return start_session(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    async def kill_keel(self) -> None:
        assert self.keel is not None
        await asyncio.to_thread(process_faults.kill, self.keel.pid)
        self.keel.wait()

    async def kill_core(self) -> None:
        assert self.core is not None
        await asyncio.to_thread(process_faults.kill, self.core.pid)
        self.core.wait()

    async def _wait_healthy(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        await asyncio.to_thread(wait_healthy, base_url, process, self.keel_log, name="Keel")

    def _wiring(self) -> dict[str, str]:
        wiring = {
            "KEEL_DATABASE_URL": f"postgresql://keel@127.0.0.1:{self.proxies['postgres'].port}/keel",
            "KEEL_LOG_LEVEL": "warning",
            "KEEL_ACCESS_LOG": "false",
            # One process, which the experiments kill and restart (with Redis, `keel serve`
            # would start one worker per core: docs/fleet.md).
            "KEEL_WORKERS": "1",
        }
        if "redis" in self.proxies:
            wiring["KEEL_REDIS_URL"] = f"redis://127.0.0.1:{self.proxies['redis'].port}/0"
        if self.nats is not None:
            wiring["KEEL_NATS_URL"] = self.nats.url
        return wiring

    async def issue_key(self, scopes: str) -> str:
        """A new API key with `scopes` (comma-separated), created by `keel keys create`."""
        return await asyncio.to_thread(self._issue_key, scopes)

    def _issue_key(self, scopes: str) -> str:
        env = {**os.environ, **self._keel_env, "KEEL_DATABASE_URL": self.postgres.url}
        env.pop("KEEL_REDIS_URL", None)
        created = keel_output(env, "keys", "create", "--scopes", scopes, "--name", "chaos", "--quiet")
        return created.strip().splitlines()[-1]

    # -- faults ----------------------------------------------------------------------------

    async def act(self, action: str, target: str, args: dict[str, Any]) -> None:
        """One step of an experiment's method (or rollback) on `target`."""
        if action == "faults":
            Faults(**args)  # checked here: a bad experiment fails before anything is sent
            await asyncio.to_thread(functools.partial(self.proxies[target].set_faults, **args))
        elif action == "clear":
            await asyncio.to_thread(self.proxies[target].clear)
        elif target == "keel":
            await self._act_on_keel(action)
        elif target == "core" and self._split:
            await self._act_on_core(action)
        elif target == "postgres":
            await self._act_on_postgres(action)
        elif target == "redis" and self.redis is not None:
            await self._act_on_server(target, self.redis, action)
        elif target == "nats" and self.nats is not None:
            await self._act_on_server(target, self.nats, action)
        else:
            raise ValueError(f"unknown action {action!r} on {target!r}")

    async def _act_on_keel(self, action: str) -> None:
        if action == "kill":
            await self.kill_keel()
        elif action == "start":
            await self.start_keel()
        elif action in ("pause", "resume") and self.keel is not None:
            # SIGSTOP, SIGCONT: seen from outside, an event loop blocked until resumed (the
            # negative control of the /healthz checks, tests/chaos/test_healthz_control.py).
            fault = process_faults.pause if action == "pause" else process_faults.resume
            await asyncio.to_thread(fault, self.keel.pid)
        else:
            raise ValueError(f"unknown action {action!r} on keel")

    async def _act_on_core(self, action: str) -> None:
        if action == "kill":
            await self.kill_core()
        elif action == "start":
            await self.start_core()
        else:
            raise ValueError(f"unknown action {action!r} on core")

    async def _act_on_postgres(self, action: str) -> None:
        if action == "stop":
            await asyncio.to_thread(self.postgres.stop)
        elif action == "start":
            await asyncio.to_thread(self.postgres.start)
            self._note_servers()
        elif action == "crash":
            await asyncio.to_thread(self.postgres.crash)
        elif action == "pause":
            await asyncio.to_thread(process_faults.pause, self.postgres.pid)
        elif action == "resume":
            await asyncio.to_thread(process_faults.resume, self.postgres.pid)
        else:
            raise ValueError(f"unknown action {action!r} on postgres")

    async def _act_on_server(self, name: str, server: RedisServer | NatsServer, action: str) -> None:
        """Redis or NATS: stopped (SIGKILL, an outage) and started again on the same port."""
        if action == "stop":
            await asyncio.to_thread(server.stop)
        elif action == "start":
            await asyncio.to_thread(server.start)
            self._note_servers()
        else:
            raise ValueError(f"unknown action {action!r} on {name}")

    async def _proxy(self, port: int) -> FaultProxyProcess:
        proxy = FaultProxyProcess(port, seed=self._seed)
        await asyncio.to_thread(proxy.start)
        return proxy
