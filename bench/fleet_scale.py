"""Scale-out on this machine: requests/s of Keel behind HAProxy as 1 node × 1 worker, 1 node × 2
workers (`keel serve --workers 2`) and 2 nodes × 1 worker, each as a ratio against 1 × 1 measured
in the same round, with an A/A pair of 1 × 1 for the noise.

    python -m bench.fleet_scale [--duration 10] [--rounds 3] [--connections 32] [--profiles 20000]

Every configuration reads `GET /v1/profiles/{id}` of random seeded ids (wrk, bench/rest_read.lua)
through a throwaway HAProxy (testkit/servers/haproxy.py) on one PostgreSQL and one Redis, with the
profile cache off (each read reaches PostgreSQL), rate limits on Redis under a plan too large to
refuse anything, and shedding off (wrk resends a refused request at once). A round starts each
configuration in turn (order reversed every other round), waits until HAProxy reports its nodes
up, warms up, then measures. Beside req/s it counts CPU seconds per request from /proc: Keel (all
its processes), HAProxy, PostgreSQL (all its processes), and wrk: on 2 cores they all compete,
and the CPU figures say where the cores went. Any non-2xx answer or socket error voids the run.
Results: stdout and a new dated report under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, keel_output, server  # noqa: E402
from testkit.results import new_result_path  # noqa: E402
from testkit.seed import seed_profiles  # noqa: E402
from testkit.servers.haproxy import haproxy  # noqa: E402
from testkit.servers.redis import redis_server  # noqa: E402

from bench.harness import WrkRun, code_state, ensure_wrk, parse_wrk, run_on_postgres, run_wrk  # noqa: E402
from bench.read_figures import aa_noise, cpu_seconds  # noqa: E402

LUA = REPO / "bench" / "rest_read.lua"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_HUGE = {"policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}], "concurrency": 100_000}


@dataclass(frozen=True)
class Shape:
    label: str
    nodes: int
    workers: int


ONE = Shape("1 node x 1 worker", 1, 1)
WORKERS = Shape("1 node x 2 workers", 1, 2)
NODES = Shape("2 nodes x 1 worker", 2, 1)
ONE_AGAIN = Shape("1 node x 1 worker (A/A)", 1, 1)
SHAPES = (ONE, WORKERS, NODES, ONE_AGAIN)


@dataclass
class Measured:
    run: WrkRun
    cpu_us: dict[str, float]  # per request: keel, haproxy, postgres, wrk


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants now."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found.extend(_tree(int(child)))
    return found


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):  # gone meanwhile
            total += cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), CLOCK_TICKS)
    return total


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@contextmanager
def _deployment(shape: Shape, env: dict[str, str], logs: Path) -> Iterator[tuple[str, dict[str, list[int]]]]:
    """`shape` behind HAProxy: its URL, and the pids to count CPU of (keel, haproxy)."""
    with ExitStack() as stack:
        ports = [free_port() for _ in range(shape.nodes)]
        nodes = [
            stack.enter_context(
                server(
                    f"keel node {n}",
                    keel_cmd("serve", "--workers", str(shape.workers)),
                    {**env, "KEEL_PORT": str(port)},
                    logs / "keel.log",
                    port,
                )
            )
            for n, port in enumerate(ports)
        ]
        proxy = stack.enter_context(
            haproxy(Path(tempfile.mkdtemp(dir=logs)), [(f"n{n}", port) for n, port in enumerate(ports)])
        )
        proxy.wait_for({f"n{n}": "UP" for n in range(shape.nodes)})
        keel_pids = [pid for node in nodes for pid in _tree(node.pid)]
        yield proxy.url, {"keel": keel_pids, "haproxy": [proxy.pid]}


def _check(url: str, profile_id: str, token: str) -> None:
    request = urllib.request.Request(  # noqa: S310 - HAProxy on loopback
        f"{url}/v1/profiles/{profile_id}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the same
        body = json.loads(answer.read())
    if body.get("id") != profile_id:
        raise RuntimeError(f"asked for {profile_id}, got {body!r}")


def _wrk(
    wrk: str, url: str, env: dict[str, str], args: argparse.Namespace, duration: float
) -> tuple[WrkRun, float]:
    """One wrk run; its report and its own CPU seconds."""
    before = os.times()
    done = run_wrk(wrk, url, LUA, threads=2, connections=args.connections, duration=duration, env=env)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return parse_wrk("keel", done.stdout), cpu


def _measure(
    shape: Shape,
    env: dict[str, str],
    wrk_env: dict[str, str],
    args: argparse.Namespace,
    logs: Path,
    probe: tuple[str, str],
) -> Measured:
    wrk = ensure_wrk()
    with _deployment(shape, env, logs) as (url, pids):
        _check(url, *probe)
        _wrk(wrk, url, wrk_env, args, args.warmup)
        postgres = _postgres_pids()
        before = {"keel": _cpu(pids["keel"]), "haproxy": _cpu(pids["haproxy"]), "postgres": _cpu(postgres)}
        run, wrk_cpu = _wrk(wrk, url, wrk_env, args, args.duration)
        after = {"keel": _cpu(pids["keel"]), "haproxy": _cpu(pids["haproxy"]), "postgres": _cpu(postgres)}
    cpu = {name: (after[name] - before[name]) * 1e6 / max(1, run.requests) for name in before}
    cpu["wrk"] = wrk_cpu * 1e6 / max(1, run.requests)
    return Measured(run, cpu)


def _benchmark(url: str, args: argparse.Namespace) -> int:
    state = code_state()
    print(f"code: {state}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="keel-fleet-bench-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    with redis_server() as redis:
        env = {
            **base_env,
            "KEEL_DATABASE_URL": url,
            "KEEL_REDIS_URL": redis.url,
            "KEEL_RATELIMIT_PLANS": json.dumps({"standard": _HUGE, "anonymous": _HUGE, "bench": _HUGE}),
            "KEEL_LOAD_SHEDDING_ENABLED": "false",
            "KEEL_CACHE_ENABLED": "false",
            "KEEL_TRUSTED_PROXY_HOPS": "1",
            # Longer than HAProxy keeps an idle connection to a node for reuse (docs/fleet.md).
            "KEEL_HTTP_KEEP_ALIVE_SECONDS": "75",
        }
        keel_output(env, "migrate", timeout=120)
        inserted, ids = asyncio.run(seed_profiles(url, args.profiles, "eu1"))
        token = keel_output(env, "keys", "create", "--scopes", "profiles:read", "--plan", "bench", "--quiet")
        token = token.strip().splitlines()[-1]
        ids_file = logs / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        wrk_env = {**base_env, "KEEL_BENCH_IDS": str(ids_file), "KEEL_BENCH_TOKEN": token}
        print(f"seeded {inserted:,} profiles; {len(ids):,} ids sampled; logs in {logs}", flush=True)
        results: dict[str, list[Measured]] = {shape.label: [] for shape in SHAPES}
        for round_number in range(args.rounds):
            order = SHAPES if round_number % 2 == 0 else tuple(reversed(SHAPES))
            print(f"round {round_number + 1}/{args.rounds}", flush=True)
            for shape in order:
                measured = _measure(shape, env, wrk_env, args, logs, (ids[0], token))
                results[shape.label].append(measured)
                run = measured.run
                cpu = "  ".join(f"{k} {v:,.0f}" for k, v in measured.cpu_us.items())
                flag = "  <-- FAILED" if run.failed else ""
                print(
                    f"  {shape.label:<26} {run.requests_per_second:>8,.0f} req/s  p50 {run.p50_ms:6.1f} ms"
                    f"  p99 {run.p99_ms:6.1f} ms  CPU us/request: {cpu}{flag}",
                    flush=True,
                )
    failed = [label for label, runs in results.items() for m in runs if m.run.failed]
    report = _report(results, args, state)
    path = new_result_path("fleet-scale")
    path.write_text(report)
    print(report)
    print(f"written: {path.relative_to(REPO)}")
    if failed:
        print(f"VOID: non-2xx answers or socket errors in {sorted(set(failed))}", file=sys.stderr)
        return 1
    return 0


def _report(results: dict[str, list[Measured]], args: argparse.Namespace, state: str) -> str:
    base = [m.run.requests_per_second for m in results[ONE.label]]
    noise = aa_noise(base, [m.run.requests_per_second for m in results[ONE_AGAIN.label]])
    lines = [
        f"# Fleet scale-out: 1 node x 1 worker against 2 workers and 2 nodes ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python -m bench.fleet_scale --duration {args.duration:g} --rounds {args.rounds}"
        f" --connections {args.connections} --profiles {args.profiles}`. Code: {state}.",
        f"Machine: {os.cpu_count()} CPUs, nothing pinned: Keel, HAProxy, PostgreSQL, Redis and wrk"
        " share them. Reads by id through HAProxy, profile cache off (every read reaches"
        " PostgreSQL), rate limits on Redis.",
        "",
        "| configuration | req/s (median) | ÷ 1 × 1 of the same round (median) | p50 ms | p99 ms |"
        " Keel CPU µs/req | HAProxy | PostgreSQL | wrk |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        runs = results[shape.label]
        ratios = [m.run.requests_per_second / b for m, b in zip(runs, base, strict=True)]
        cpu = {
            k: statistics.median(m.cpu_us[k] for m in runs) for k in ("keel", "haproxy", "postgres", "wrk")
        }
        lines.append(
            f"| {shape.label} | {statistics.median(m.run.requests_per_second for m in runs):,.0f}"
            f" | {statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"
            f" | {statistics.median(m.run.p50_ms for m in runs):.1f}"
            f" | {statistics.median(m.run.p99_ms for m in runs):.1f}"
            f" | {cpu['keel']:,.0f} | {cpu['haproxy']:,.0f} | {cpu['postgres']:,.0f} | {cpu['wrk']:,.0f} |"
        )
    lines += [
        "",
        "A/A noise (1 × 1 measured twice a round, second ÷ first):"
        f" {', '.join(f'{r:.2f}' for r in noise.ratios)}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profiles", type=int, default=20_000)
    args = parser.parse_args()
    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
