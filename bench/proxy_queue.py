"""Overload refused in Python, or held before it: one Keel node behind HAProxy under more
concurrent requests than its adaptive limit, with HAProxy fed by Keel's agent check (the node's
limit becomes HAProxy's maxconn: the excess waits in HAProxy's queue) against HAProxy without
it (the excess reaches the node, whose load shedder refuses it with a 503 in Python).

    python -m bench.proxy_queue [--duration 8] [--rounds 3] [--connections 128]

wrk (bench/rest_read.lua: `GET /v1/profiles/{id}` of random seeded ids) runs pinned to CPU 1,
Keel and HAProxy to CPU 0 (`sched_setaffinity`), so the service side's CPU is its own. SQLite,
the profile cache off (every read reaches the database), rate limits off. The two
configurations alternate within each round (order reversed every other round); each is
measured after a warm-up. Figures per configuration: served requests/s (2xx), refusals/s
(non-2xx), p50/p99 over all answers, and CPU seconds from /proc per served request, for Keel and
for HAProxy: the cost of the refusals lands on whichever refuses. Results: stdout and a new dated
report under docs/performance/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

import httpx  # noqa: E402
from testkit.health import until  # noqa: E402
from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, keel_output, server  # noqa: E402
from testkit.results import new_result_path  # noqa: E402
from testkit.servers.haproxy import haproxy  # noqa: E402

from bench.harness import (  # noqa: E402
    WrkRun,
    code_state,
    ensure_wrk,
    parse_wrk,
    pin,
    run_wrk,
    sqlite_node_env,
    wrk_prefix,
)
from bench.read_figures import process_cpu_seconds  # noqa: E402

LUA = REPO / "bench" / "rest_read.lua"
CONFIGURATIONS = ("agent: HAProxy queues", "no agent: Keel sheds")
PROFILES = 200


@dataclass
class Measured:
    configuration: str
    run: WrkRun
    keel_cpu_s: float
    haproxy_cpu_s: float
    limit: float

    @property
    def served(self) -> int:
        return self.run.requests - self.run.non_2xx_3xx

    @property
    def served_per_second(self) -> float:
        return self.run.requests_per_second * self.served / max(1, self.run.requests)

    @property
    def refused_per_second(self) -> float:
        return self.run.requests_per_second - self.served_per_second

    def per_served_us(self, cpu_s: float) -> float:
        return cpu_s * 1e6 / max(1, self.served)


def _round(
    configuration: str, env: dict[str, str], logs: Path, ids: Path, token: str, args: argparse.Namespace
) -> Measured:
    port, agent = free_port(), free_port()
    node_env = {**env, "KEEL_PORT": str(port), "KEEL_AGENT_PORT": str(agent)}
    agents = {"node": agent} if configuration == CONFIGURATIONS[0] else None
    with (
        server("node", keel_cmd("serve"), node_env, logs / "node.log", port) as node,
        haproxy(logs / f"haproxy-{time.monotonic_ns()}", [("node", port)], agents=agents) as proxy,
    ):
        proxy.wait_for({"node": "UP"})
        if agents is not None:
            until(
                lambda: proxy.stat()["node"]["slim"] not in ("", "0"), "HAProxy applies the agent's maxconn"
            )
        pin(node.pid, 0)
        pin(proxy.pid, 0)
        wrk = ensure_wrk()
        wrk_env = {**os.environ, "KEEL_BENCH_IDS": str(ids), "KEEL_BENCH_TOKEN": token}
        common = {"threads": 2, "connections": args.connections, "env": wrk_env, "prefix": wrk_prefix()}
        run_wrk(wrk, proxy.url, LUA, duration=2, **common)  # warm-up
        keel_before, proxy_before = process_cpu_seconds(node.pid), process_cpu_seconds(proxy.pid)
        done = run_wrk(wrk, proxy.url, LUA, duration=args.duration, **common)
        keel_after, proxy_after = process_cpu_seconds(node.pid), process_cpu_seconds(proxy.pid)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    limit = next(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("keel_adaptive_concurrency_limit ")
    )
    return Measured(
        configuration,
        parse_wrk(configuration, done.stdout),
        keel_after - keel_before,
        proxy_after - proxy_before,
        limit,
    )


def _seed(env: dict[str, str], logs: Path, token: str) -> list[str]:
    port = free_port()
    ids = []
    seeding = {**env, "KEEL_PORT": str(port)}
    headers = {"Authorization": f"Bearer {token}"}
    with (
        server("seed", keel_cmd("serve"), seeding, logs / "seed.log", port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client,
    ):
        for n in range(PROFILES):
            emails = [{"address": f"q{n}@example.com", "primary": True}]
            created = client.post(
                "/v1/profiles", json={"handle": f"queued_{n}", "emails": emails}, timeout=10
            )
            created.raise_for_status()
            ids.append(created.json()["id"])
    return ids


def _median(results: list[Measured], value: str) -> tuple[float, float]:
    values = [float(getattr(m, value)) for m in results]
    median = statistics.median(values)
    spread = max(abs(v - median) for v in values) / median if median else 0.0
    return median, spread


def _report(results: dict[str, list[Measured]], args: argparse.Namespace) -> str:
    lines = [
        f"# Overload held in HAProxy's queue or refused in Python ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python -m bench.proxy_queue --duration {args.duration:g} --rounds {args.rounds}"
        f" --connections {args.connections}`. Code: {code_state()}. One Keel node (SQLite, cache and rate"
        " limits off, adaptive limit and shedding on) behind HAProxy from deploy/haproxy/haproxy.cfg;"
        " wrk pinned to CPU 1, Keel and HAProxy to CPU 0; reads of random ids, closed loop (a refused"
        " request is resent at once).",
        "",
        f"Medians over {args.rounds} rounds; beside each, the largest distance of a round from the median.",
        "",
        "| configuration | served/s | refused/s | p50 ms | p99 ms | Keel CPU µs per served"
        " | HAProxy CPU µs per served | Keel's limit at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for configuration in CONFIGURATIONS:
        runs = results[configuration]
        served, served_spread = _median(runs, "served_per_second")
        refused, _ = _median(runs, "refused_per_second")
        p50 = statistics.median(m.run.p50_ms for m in runs)
        p99 = statistics.median(m.run.p99_ms for m in runs)
        keel = statistics.median(m.per_served_us(m.keel_cpu_s) for m in runs)
        proxy = statistics.median(m.per_served_us(m.haproxy_cpu_s) for m in runs)
        limit = statistics.median(m.limit for m in runs)
        lines.append(
            f"| {configuration} | {served:,.0f} (±{served_spread:.0%}) | {refused:,.0f}"
            f" | {p50:.1f} | {p99:.1f} | {keel:,.0f} | {proxy:,.0f} | {limit:.0f} |"
        )
    agent, shed = (results[c] for c in CONFIGURATIONS)
    ratio = statistics.median(m.served_per_second for m in agent) / statistics.median(
        m.served_per_second for m in shed
    )
    keel_ratio = statistics.median(m.per_served_us(m.keel_cpu_s) for m in agent) / statistics.median(
        m.per_served_us(m.keel_cpu_s) for m in shed
    )
    lines += [
        "",
        f"- **Served requests/s, agent ÷ no agent: {ratio:.2f}**",
        f"- Keel's CPU per served request, agent ÷ no agent: {keel_ratio:.2f}",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=128)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="keel-proxy-queue-"))
    env = sqlite_node_env(logs) | {"KEEL_TRUSTED_PROXY_HOPS": "1", "KEEL_HTTP_KEEP_ALIVE_SECONDS": "75"}
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    ids = logs / "ids.txt"
    ids.write_text("\n".join(_seed(env, logs, token)) + "\n")
    results: dict[str, list[Measured]] = {c: [] for c in CONFIGURATIONS}
    for number in range(1, args.rounds + 1):
        order = CONFIGURATIONS if number % 2 else tuple(reversed(CONFIGURATIONS))
        for configuration in order:
            measured = _round(configuration, env, logs, ids, token, args)
            results[configuration].append(measured)
            print(
                f"  round {number} {configuration:<24} served {measured.served_per_second:7,.0f}/s"
                f"  refused {measured.refused_per_second:7,.0f}/s  p99 {measured.run.p99_ms:6.1f} ms"
                f"  Keel {measured.per_served_us(measured.keel_cpu_s):5.0f} µs/served"
                f"  HAProxy {measured.per_served_us(measured.haproxy_cpu_s):4.0f} µs/served"
                f"  limit {measured.limit:.0f}",
                flush=True,
            )
    report = _report(results, args)
    path = new_result_path("proxy-queue")
    path.write_text(report)
    print(report)
    print(f"written: {path.relative_to(REPO)}")
    print(json.dumps({c: [m.served_per_second for m in runs] for c, runs in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
