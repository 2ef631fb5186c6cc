"""gRPC vs REST benchmark: 100 profiles by id via `BatchGetProfiles` against the REST
`GET /v1/profiles?ids=…&limit=100` returning the same profiles, from one Keel process serving
both, in the same run; then the latency a split deployment (edge → core over gRPC) adds to a
single read against the monolith.

    python bench/grpc_vs_rest.py [--duration 10] [--rounds 2] [--concurrency 8] [--profiles 5000]
                                 [--latency-requests 1000] [--py-spy]

Starts a throwaway PostgreSQL (or uses KEEL_BENCH_POSTGRES_URL), migrates and seeds it, creates
keys, starts `keel serve --grpc-port` (the core, which also serves REST) and, for the latency
part, `keel serve --core grpc://…` (an edge). Phases alternate REST, gRPC per round; each is a
closed loop of `--concurrency` callers in this process, each fetching random batches of 100
sampled ids and decoding the answer (JSON for REST, protobuf for gRPC): a client that does not
parse what it receives would hide half the cost. Reports per protocol: batches/s, the client's
and the server's CPU time per batch (process CPU, /proc for the server), and the ratio.
Results: stdout and bench/results/grpc_vs_rest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

import grpc  # noqa: E402
from testkit.loadgen import Connection, auth_headers  # noqa: E402
from testkit.percentile import percentile  # noqa: E402
from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, server  # noqa: E402
from testkit.seed import seed_profiles  # noqa: E402

from bench.harness import run_on_postgres  # noqa: E402
from keel.api.grpc.wire.v1 import profiles_pb2 as pb  # noqa: E402
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc  # noqa: E402

RESULTS = REPO / "bench" / "results"
BATCH = 100
TARGET_RATIO = 2.0
_HUGE = {"policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}], "concurrency": 100_000}
BENCH_PLANS = {"standard": _HUGE, "anonymous": _HUGE, "bench": _HUGE}
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def keel(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(keel_cmd(*args), env=env, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"keel {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Rest:
    def __init__(self, port: int, token: str) -> None:
        self._port = port
        self._headers = auth_headers(token)

    async def open(self, count: int) -> list[Connection]:
        return [await Connection.open(self._port) for _ in range(count)]

    async def batch(self, connection: Connection, ids: list[str]) -> list[dict[str, Any]]:
        response = await connection.request(
            "GET", f"/v1/profiles?limit={BATCH}&ids={','.join(ids)}", self._headers
        )
        if response.status != 200:
            raise RuntimeError(f"REST answered {response.status}: {response.body[:300]!r}")
        items: list[dict[str, Any]] = json.loads(response.body)["items"]
        return items


class Grpc:
    def __init__(self, target: str, token: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.ProfileServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def batch(self, ids: list[str]) -> pb.BatchGetProfilesResponse:
        reply: pb.BatchGetProfilesResponse = await self._stub.BatchGetProfiles(
            pb.BatchGetProfilesRequest(ids=ids), metadata=self._metadata, timeout=10
        )
        return reply

    async def close(self) -> None:
        await self._channel.close()


async def _closed_loop(call: Any, workers: int, duration: float, ids: list[str], seed: int) -> int:
    """`workers` callers, each calling again as soon as its last batch is decoded; batches done."""
    done = 0
    stop_at = time.perf_counter() + duration
    rng = random.Random(seed)

    async def worker(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(index, rng.sample(ids, BATCH))
            done += 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return done


async def _phase(
    name: str, call: Any, args: argparse.Namespace, ids: list[str], pid: int, seed: int
) -> dict[str, float]:
    server_before, client_before, started = cpu_seconds(pid), time.process_time(), time.perf_counter()
    batches = await _closed_loop(call, args.concurrency, args.duration, ids, seed)
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(pid) - server_before, time.process_time() - client_before
    result = {
        "batches_per_second": batches / elapsed,
        "profiles_per_second": batches * BATCH / elapsed,
        "client_cpu_ms_per_batch": 1000 * client_cpu / batches,
        "server_cpu_ms_per_batch": 1000 * server_cpu / batches,
        "batches": batches,
    }
    print(f"{name:5} {_figures(result)}", flush=True)
    return result


def _figures(m: dict[str, float]) -> str:
    return (
        f"{m['batches_per_second']:8.1f} batches/s ({m['profiles_per_second']:9,.0f} profiles/s)  CPU per"
        f" batch: client {m['client_cpu_ms_per_batch']:.2f} ms, server {m['server_cpu_ms_per_batch']:.2f} ms"
    )


def _same_data(rest_items: list[dict[str, Any]], reply: pb.BatchGetProfilesResponse) -> None:
    """Both protocols return the same profiles with the same fields, before anything is timed."""
    by_id = {item["id"]: item for item in rest_items}
    assert len(reply.profiles) == BATCH == len(by_id), (len(reply.profiles), len(by_id))
    for message in reply.profiles:
        item = by_id[message.id]
        assert item["handle"] == message.handle
        assert [e["address"] for e in item["emails"]] == [e.address for e in message.emails]
        assert [link["url"] for link in item["links"]] == [link.url for link in message.links]
        assert item["attributes"] == json.loads(message.attributes_json)
        assert item["version"] == message.version


async def _throughput(
    args: argparse.Namespace, http_port: int, grpc_port: int, token: str, ids: list[str], pid: int
) -> dict[str, Any]:
    rest = Rest(http_port, token)
    rpc = Grpc(f"127.0.0.1:{grpc_port}", token)
    # Opened afresh before each REST phase: uvicorn closes keep-alive connections idle for 5 s,
    # as they are while gRPC is measured.
    connections: list[Connection] = []

    async def reconnect() -> None:
        for connection in connections:
            connection.close()
        connections[:] = await rest.open(args.concurrency)

    try:
        await reconnect()
        sample = ids[:BATCH]
        _same_data(await rest.batch(connections[0], sample), await rpc.batch(sample))
        print(
            f"checked: both return the same {BATCH} profiles; warming up {args.warmup:.0f}s each", flush=True
        )

        async def rest_call(worker: int, batch: list[str]) -> None:
            await rest.batch(connections[worker], batch)

        async def grpc_call(worker: int, batch: list[str]) -> None:
            await rpc.batch(batch)

        calls = {"rest": rest_call, "grpc": grpc_call}
        for call in calls.values():
            await _closed_loop(call, args.concurrency, args.warmup, ids, seed=0)
        runs: dict[str, list[dict[str, float]]] = {"rest": [], "grpc": []}
        for round_number in range(args.rounds):
            order = ["rest", "grpc"] if round_number % 2 == 0 else ["grpc", "rest"]
            for name in order:
                if name == "rest":
                    await reconnect()
                runs[name].append(await _phase(name, calls[name], args, ids, pid, seed=round_number + 1))
    finally:
        for connection in connections:
            connection.close()
        await rpc.close()
    median = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()
    }
    ratio = median["grpc"]["batches_per_second"] / median["rest"]["batches_per_second"]
    return {"runs": runs, "median": median, "ratio": ratio}


async def _latency(
    args: argparse.Namespace, ports: dict[str, int], token: str, ids: list[str]
) -> dict[str, Any]:
    """Sequential single reads, monolith and edge alternating in blocks: the added latency of
    the split is the difference, measured under the same conditions."""
    headers = auth_headers(token)
    connections = {name: await Connection.open(port) for name, port in ports.items()}
    samples: dict[str, list[float]] = {name: [] for name in ports}
    rng = random.Random(7)
    try:
        for connection in connections.values():  # warm: caches, the edge's key, the channel
            for profile_id in ids[:50]:
                await connection.request("GET", f"/v1/profiles/{profile_id}", headers)
        blocks = max(1, args.latency_requests // 100)
        for _ in range(blocks):
            for name, connection in connections.items():
                for _ in range(100):
                    path = f"/v1/profiles/{rng.choice(ids)}"
                    started = time.perf_counter()
                    response = await connection.request("GET", path, headers)
                    samples[name].append(time.perf_counter() - started)
                    if response.status != 200:
                        raise RuntimeError(f"{name} answered {response.status}")
    finally:
        for connection in connections.values():
            connection.close()
    summary: dict[str, Any] = {
        name: {
            "p50_ms": 1000 * percentile(values, 50),
            "p99_ms": 1000 * percentile(values, 99),
            "requests": len(values),
        }
        for name, values in samples.items()
    }
    summary["added_p50_ms"] = summary["edge"]["p50_ms"] - summary["monolith"]["p50_ms"]
    summary["added_p99_ms"] = summary["edge"]["p99_ms"] - summary["monolith"]["p99_ms"]
    return summary


def _py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            f"{seconds:.0f}",
            "--rate",
            "100",
            "--gil",
            "--full-filenames",
            "--format",
            "raw",
            "-o",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _benchmark(url: str, args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env = {
        **base_env,
        "KEEL_DATABASE_URL": url,
        "KEEL_RATELIMIT_PLANS": json.dumps(BENCH_PLANS),
        "KEEL_LOAD_SHEDDING_ENABLED": "false",  # closed loops resend at once; measure reads, not refusals
    }
    keel(env, "migrate")
    inserted, ids = asyncio.run(asyncio.wait_for(seed_profiles(url, args.profiles, "eu1"), 900))
    print(f"seeded {inserted:,} profiles; sampled {len(ids):,} ids", flush=True)
    token = keel(env, "keys", "create", "--scopes", "profiles:read", "--plan", "bench", "--quiet").strip()
    edge_token = keel(env, "keys", "create", "--scopes", "edge", "--name", "edge", "--quiet").strip()
    http_port, grpc_port, edge_port = free_port(), free_port(), free_port()
    core_env = {**env, "KEEL_GRPC_PORT": str(grpc_port), "KEEL_ACCESS_LOG": "true"}
    if args.no_encoded_cache:
        core_env["KEEL_GRPC_ENCODED_PROFILES"] = "0"
    edge_env = {**env, "KEEL_CORE_API_KEY": edge_token}
    core_log, edge_log = RESULTS / "grpc-core.log", RESULTS / "grpc-edge.log"
    core_cmd = keel_cmd("serve", "--host", "127.0.0.1", "--port", str(http_port))
    edge_cmd = keel_cmd(
        "serve", "--host", "127.0.0.1", "--port", str(edge_port), "--core", f"grpc://127.0.0.1:{grpc_port}"
    )
    with server("core", core_cmd, core_env, core_log, http_port) as core:
        print(f"core: REST on :{http_port}, gRPC on :{grpc_port} (one process, pid {core.pid})", flush=True)
        throughput = asyncio.run(_throughput(args, http_port, grpc_port, token, ids, core.pid))
        profile_path = None
        if args.py_spy:
            profile_path = RESULTS / "grpc-core-pyspy.txt"
            recorder = _py_spy(core.pid, args.duration, profile_path)
            time.sleep(1.0)

            async def profiled() -> None:
                rpc = Grpc(f"127.0.0.1:{grpc_port}", token)
                await _closed_loop(lambda w, b: rpc.batch(b), args.concurrency, args.duration, ids, 9)
                await rpc.close()

            asyncio.run(profiled())
            recorder.wait(timeout=60)
            from bench.pyspy_summary import summarise

            print(summarise(profile_path, 15), flush=True)
        with server("edge", edge_cmd, edge_env, edge_log, edge_port):
            latency = asyncio.run(_latency(args, {"monolith": http_port, "edge": edge_port}, token, ids))
    median = throughput["median"]
    print("\nmedian of the rounds:")
    for name in ("rest", "grpc"):
        print(f"  {name:5} {_figures(median[name])}")
    print(f"ratio grpc/rest (throughput): {throughput['ratio']:.2f}   (target >= {TARGET_RATIO})")
    mono, edge = latency["monolith"], latency["edge"]
    print(f"single read, sequential: monolith p50 {mono['p50_ms']:.2f} ms p99 {mono['p99_ms']:.2f} ms")
    print(f"                         edge→core p50 {edge['p50_ms']:.2f} ms p99 {edge['p99_ms']:.2f} ms")
    print(f"added by the split: p50 {latency['added_p50_ms']:.2f} ms, p99 {latency['added_p99_ms']:.2f} ms")
    output = {"args": vars(args) | {"output": str(args.output)}, "throughput": throughput, "latency": latency}
    args.output.write_text(json.dumps(output, indent=2, default=str))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load per protocol")
    parser.add_argument("--rounds", type=int, default=2, help="phases per protocol (median)")
    parser.add_argument("--concurrency", type=int, default=8, help="callers in flight per phase")
    parser.add_argument("--profiles", type=int, default=5_000, help="profiles to seed")
    parser.add_argument("--latency-requests", type=int, default=1_000, help="sequential reads per mode")
    parser.add_argument("--py-spy", action="store_true", help="then profile the core under gRPC load")
    parser.add_argument(
        "--no-encoded-cache", action="store_true", help="the core encodes every profile of every answer anew"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "grpc_vs_rest.json")
    args = parser.parse_args()

    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
