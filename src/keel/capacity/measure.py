"""`keel capacity measure`: open-loop step ramps of reads, writes and a mix against one or more
deployments (or `keel serve --workers N` processes it starts), each deployment at a known scale
(N workers or nodes), and the knee of each ramp."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from keel.capacity.load import Client, Request, Target, open_loop
from keel.capacity.processes import tree_cpu_seconds
from keel.capacity.steps import Step, knee, step_from_json

KINDS = ("read", "write", "mix")
# Past the knee twice in a row: the ramp has shown the decline and stops.
STEPS_PAST_KNEE = 2


@dataclass(frozen=True)
class Ramp:
    start_rps: float
    step_rps: float
    max_rps: float
    step_seconds: float
    p99_slo_ms: float
    read_share: float  # of the mix
    kinds: tuple[str, ...] = KINDS
    connections: int = 64
    profiles: int = 100
    timeout_seconds: float = 10.0
    seed: int = 1

    def rates(self) -> list[float]:
        count = int((self.max_rps - self.start_rps) // self.step_rps) + 1
        return [self.start_rps + i * self.step_rps for i in range(count)]


@dataclass
class Series:
    kind: str
    scale: int
    steps: list[Step] = field(default_factory=list)


@dataclass
class Measurement:
    measured_at: str
    unit: str  # "workers" or "nodes"
    targets: dict[int, str]  # scale -> what was measured (a URL, or the command started)
    ramp: Ramp
    series: list[Series]
    client_cpu_seconds: float
    cores: int

    def knee(self, kind: str, scale: int) -> Step | None:
        for series in self.series:
            if series.kind == kind and series.scale == scale:
                return knee(series.steps, self.ramp.p99_slo_ms)
        return None

    def scales(self) -> list[int]:
        return sorted(self.targets)

    def as_json(self) -> dict[str, Any]:
        return {
            "measured_at": self.measured_at,
            "unit": self.unit,
            "targets": {str(scale): what for scale, what in self.targets.items()},
            "ramp": {**self.ramp.__dict__, "kinds": list(self.ramp.kinds)},
            "series": [
                {"kind": s.kind, "scale": s.scale, "steps": [step.as_json() for step in s.steps]}
                for s in self.series
            ],
            "client_cpu_seconds": self.client_cpu_seconds,
            "cores": self.cores,
        }


def measurement_from_json(data: dict[str, Any]) -> Measurement:
    ramp = data["ramp"]
    return Measurement(
        measured_at=data["measured_at"],
        unit=data["unit"],
        targets={int(scale): what for scale, what in data["targets"].items()},
        ramp=Ramp(**{**ramp, "kinds": tuple(ramp["kinds"])}),
        series=[
            Series(s["kind"], int(s["scale"]), [step_from_json(step) for step in s["steps"]])
            for s in data["series"]
        ],
        client_cpu_seconds=data["client_cpu_seconds"],
        cores=data["cores"],
    )


def load_measurement(path: str) -> Measurement:
    with open(path, encoding="utf-8") as file:
        return measurement_from_json(json.load(file))


# --- the workload ------------------------------------------------------------------------------


class Workload:
    """Profiles of its own, made before the ramps and deleted after: reads of them, merge-patch
    writes to them, and a mix of both."""

    def __init__(self, client: Client, ramp: Ramp) -> None:
        self.client = client
        self.ramp = ramp
        self.ids: list[str] = []

    async def create(self) -> None:
        run = secrets.token_hex(4)
        for i in range(self.ramp.profiles):
            body = json.dumps(
                {
                    "handle": f"cap{run}_{i}",
                    "emails": [{"address": f"cap{run}_{i}@example.com", "primary": True}],
                }
            ).encode()
            answer = await self.client.send(("POST", "/v1/profiles", body, "application/json"))
            if answer.status != 201:
                raise RuntimeError(
                    f"creating the measurement's profiles: {answer.status} {answer.body[:300]!r}"
                    " (the key needs profiles:write, and a plan that admits the ramp)"
                )
            self.ids.append(json.loads(answer.body)["id"])

    async def delete(self) -> int:
        """Delete the profiles made; how many could not be."""
        left = 0
        for profile_id in self.ids:
            try:
                answer = await self.client.send(("DELETE", f"/v1/profiles/{profile_id}", b"", ""))
                left += answer.status not in (204, 404)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                left += 1
        return left

    def request(self, kind: str) -> Callable[[random.Random], Request]:
        def read(rng: random.Random) -> Request:
            return ("GET", f"/v1/profiles/{rng.choice(self.ids)}", b"", "")

        def write(rng: random.Random) -> Request:
            body = json.dumps({"display_name": f"capacity {rng.randrange(1_000_000)}"}).encode()
            return ("PATCH", f"/v1/profiles/{rng.choice(self.ids)}", body, "application/merge-patch+json")

        def mix(rng: random.Random) -> Request:
            return read(rng) if rng.random() < self.ramp.read_share else write(rng)

        return {"read": read, "write": write, "mix": mix}[kind]


def counted(n: int, unit: str) -> str:
    """ "1 worker", "2 workers": `unit` is the plural."""
    return f"{n} {unit[:-1] if n == 1 else unit}"


OnStep = Callable[[Series, Step], None]


@contextmanager
def redis_commands(redis_url: str) -> Iterator[Callable[[], dict[str, int]]]:
    """Redis's calls so far by command (INFO commandstats), read on each call; between steps
    only (a blocking client: it never runs while a step's requests do)."""
    from redis import Redis

    connection = Redis.from_url(redis_url, socket_timeout=5)

    def read() -> dict[str, int]:
        stats = connection.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}

    try:
        yield read
    finally:
        connection.close()


async def measure_target(
    url: str,
    token: str,
    scale: int,
    ramp: Ramp,
    on_step: OnStep,
    found: list[Series],
    server_pid: int | None = None,
    redis_url: str | None = None,
) -> None:
    """Every kind's ramp against one deployment, appended to `found` as it is measured."""
    client = Client(Target.parse(url, token), ramp.connections, ramp.timeout_seconds)
    workload = Workload(client, ramp)
    server_cpu = None
    if server_pid is not None and tree_cpu_seconds(server_pid) is not None:

        def server_cpu() -> float:
            return tree_cpu_seconds(server_pid) or 0.0

    with ExitStack() as stack:
        commands = stack.enter_context(redis_commands(redis_url)) if redis_url else None
        await _ramps(client, workload, scale, ramp, on_step, server_cpu, commands, found)


async def _ramps(
    client: Client,
    workload: Workload,
    scale: int,
    ramp: Ramp,
    on_step: OnStep,
    server_cpu: Callable[[], float] | None,
    commands: Callable[[], dict[str, int]] | None,
    found: list[Series],
) -> None:
    """Every kind's ramp into `found` (kept when one fails midway), on profiles made first and
    deleted after, however the ramps end."""
    try:
        await workload.create()
        for kind in ramp.kinds:
            series = Series(kind, scale)
            found.append(series)
            # A short warm-up at the first rate: connections opened, caches and plans warm.
            await open_loop(
                client, ramp.start_rps, min(2.0, ramp.step_seconds), workload.request(kind), seed=0
            )
            past = 0
            for index, rate in enumerate(ramp.rates()):
                before = commands() if commands else None
                step = await open_loop(
                    client,
                    rate,
                    ramp.step_seconds,
                    workload.request(kind),
                    seed=ramp.seed * 1000 + index,
                    server_cpu=server_cpu,
                )
                if commands and before is not None:
                    after = commands()
                    by_command = {name: calls - before.get(name, 0) for name, calls in after.items()}
                    by_command = {name: calls for name, calls in sorted(by_command.items()) if calls}
                    step = replace(step, redis_commands=sum(by_command.values()), redis_by_command=by_command)
                series.steps.append(step)
                on_step(series, step)
                past = 0 if step.within(ramp.p99_slo_ms) else past + 1
                if past >= STEPS_PAST_KNEE:
                    break
    finally:
        await workload.delete()
        await client.close()


# --- deployments it starts itself ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`keel serve` exited with {process.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:  # noqa: S310 (loopback)
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"`keel serve` was not healthy within {seconds:.0f} s")


@contextmanager
def started_keel(workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`keel serve --workers N` on a free loopback port, with this environment's settings."""
    port = _free_port()
    command = [sys.executable, "-m", "keel", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, process
    finally:
        # A second SIGTERM to this command must not cut the stopping of the server short.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def measure(
    token: str,
    ramp: Ramp,
    *,
    unit: str,
    targets: dict[int, str] | None = None,
    start_workers: Sequence[int] = (),
    redis_url: str | None = None,
    on_step: OnStep = lambda series, step: None,
) -> Measurement:
    """Ramp every kind against each deployment in turn: the URLs given (scale -> URL), or `keel
    serve --workers N` started here for each N of `start_workers`. With `redis_url`, the commands
    Redis processed in each step are counted (everything it processed: other clients' too).
    A failure midway raises MeasurementCut, which carries what was measured until then."""
    cpu_before = time.process_time()
    described: dict[int, str] = {}
    series: list[Series] = []

    def so_far() -> Measurement:
        return Measurement(
            measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
            unit=unit,
            targets=described,
            ramp=ramp,
            series=[s for s in series if s.steps],
            client_cpu_seconds=time.process_time() - cpu_before,
            cores=os.cpu_count() or 1,
        )

    try:
        for scale, url in sorted((targets or {}).items()):
            described[scale] = url
            asyncio.run(measure_target(url, token, scale, ramp, on_step, series, redis_url=redis_url))
        for workers in start_workers:
            with started_keel(workers) as (url, process):
                described[workers] = f"keel serve --workers {workers}"
                asyncio.run(
                    measure_target(
                        url,
                        token,
                        workers,
                        ramp,
                        on_step,
                        series,
                        server_pid=process.pid,
                        redis_url=redis_url,
                    )
                )
    except (RuntimeError, OSError, ValueError, RedisError) as error:
        raise MeasurementCut(so_far(), error) from error
    return so_far()


class MeasurementCut(Exception):
    """A measurement that failed midway, with what it had measured."""

    def __init__(self, partial: Measurement, cause: Exception) -> None:
        super().__init__(str(cause))
        self.partial = partial
        self.cause = cause
