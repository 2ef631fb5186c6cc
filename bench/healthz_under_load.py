"""`/healthz` latency of a freshly started Keel under a read and write load, with what blocked its
event loop (bench/loop_stalls.py): the window chaos experiments 01 and 05 poll right after
start-up. A throwaway PostgreSQL, one `keel serve`, then at once for `--duration` seconds:
writers creating profiles and readers reading them (`--writers` + `--readers` async clients in
a separate process), and this process polling `/healthz` every 50 ms, as the chaos runner does.

    python -m bench.healthz_under_load [--duration 20] [--writers 4] [--readers 8]

Prints the polls' p50/p99/max, Keel's own `/healthz` count, and the loop stalls of Keel.
With 2+ CPUs, Keel and PostgreSQL run on the first, the load and the poller on the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, server  # noqa: E402
from testkit.servers.postgres import postgres_server  # noqa: E402

_PLAN = {"policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}], "concurrency": 100_000}


async def _load(base: str, token: str, duration: float, writers: int, readers: int) -> dict[str, int]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    ids: list[str] = []
    counts = {"writes": 0, "reads": 0, "failed": 0}
    deadline = time.monotonic() + duration

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:

        async def write(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                body = {
                    "handle": f"h{n}_{i}_{os.getpid()}",
                    "emails": [{"address": f"u{n}_{i}_{os.getpid()}@example.com", "primary": True}],
                }
                response = await client.post("/v1/profiles", json=body)
                if response.status_code == 201:
                    ids.append(response.json()["id"])
                    counts["writes"] += 1
                else:
                    counts["failed"] += 1

        async def read(n: int) -> None:
            while time.monotonic() < deadline:
                if not ids:
                    await asyncio.sleep(0.01)
                    continue
                response = await client.get(f"/v1/profiles/{ids[(n * 7919 + counts['reads']) % len(ids)]}")
                counts["reads" if response.status_code == 200 else "failed"] += 1

        await asyncio.gather(*(write(n) for n in range(writers)), *(read(n) for n in range(readers)))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--threshold-ms", type=float, default=10.0, help="loop stalls reported from")
    parser.add_argument("--load-only", nargs=4, help=argparse.SUPPRESS)  # base token duration w,r
    args = parser.parse_args()
    if args.load_only:
        base, token, duration, wr = args.load_only
        w, r = (int(x) for x in wr.split(","))
        print(json.dumps(asyncio.run(_load(base, token, float(duration), w, r))))
        return 0

    cpus = sorted(os.sched_getaffinity(0))
    service, client = (cpus[:1], cpus[1:]) if len(cpus) > 1 else (cpus, cpus)
    os.sched_setaffinity(0, service)  # PostgreSQL and Keel inherit it
    with postgres_server(env_var="KEEL_BENCH_POSTGRES_URL") as url, tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env |= {
            "KEEL_DATABASE_URL": url,
            "KEEL_RATELIMIT_PLANS": json.dumps({"standard": _PLAN, "anonymous": _PLAN, "bench": _PLAN}),
            "KEEL_LOAD_SHEDDING_ENABLED": "false",
        }
        subprocess.run(keel_cmd("migrate"), env=env, check=True, capture_output=True, timeout=120)
        created = subprocess.run(
            keel_cmd(
                "keys",
                "create",
                "--scopes",
                "profiles:read,profiles:write",
                "--name",
                "h",
                "--plan",
                "bench",
                "--quiet",
            ),
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        token = [x for x in created.stdout.split() if x.startswith("keel_")][-1]
        port = free_port()
        report = Path(os.environ.get("KEEL_HEALTHZ_REPORT") or Path(tmp) / "stalls.json")
        log = Path(os.environ.get("KEEL_HEALTHZ_LOG") or Path(tmp) / "keel.log")
        cmd = [
            sys.executable,
            "-m",
            "bench.loop_stalls",
            "--threshold-ms",
            str(args.threshold_ms),
            "--report",
            str(report),
            "--",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        base = f"http://127.0.0.1:{port}"
        polls: list[float] = []
        with server("keel", cmd, env, log, port, sig=signal.SIGTERM):
            loader = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.healthz_under_load",
                    "--load-only",
                    base,
                    token,
                    str(args.duration),
                    f"{args.writers},{args.readers}",
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, client),
            )
            os.sched_setaffinity(0, client)
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                started = time.monotonic()
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:  # noqa: S310
                    response.read()
                polls.append((time.monotonic() - started) * 1000)
                time.sleep(0.05)
            out, _ = loader.communicate(timeout=60)
        stalls = json.loads(report.read_text())
    polls.sort()
    p99 = polls[min(len(polls) - 1, int(len(polls) * 0.99))]
    print(f"load: {out.strip()}")
    print(
        f"/healthz polls: {len(polls)}, p50 {statistics.median(polls):.1f} ms, p99 {p99:.1f} ms, "
        f"max {polls[-1]:.1f} ms"
    )
    print(
        f"Keel loop stalls >= {stalls['threshold_ms']:g} ms: {stalls['stalls']} "
        f"(longest {stalls['longest_ms']:.1f} ms, {stalls['with_gc']} with a GC pass)"
    )
    for stall in stalls["each"][:15]:
        where = " < ".join(reversed(stall["stack"][-5:]))
        at, ms, passes = stall["at_s"], stall["duration_ms"], stall["gc_collections"]
        print(f"  at {at:6.2f}s {ms:6.1f} ms gc={passes} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
