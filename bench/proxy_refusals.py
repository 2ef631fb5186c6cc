"""An abuser's flood refused by HAProxy, or by Keel: one Keel node behind HAProxy (the deployed
configuration), one API key far over its quota sending as fast as it can; with
KEEL_PROXY_RUNTIME_API (Keel writes the refused key to HAProxy's table, and HAProxy answers its
requests itself) against without it (every request reaches the node, which refuses it in Python,
from its remembered refusal).

    python -m bench.proxy_refusals [--duration 6] [--rounds 3] [--connections 32]

wrk (the abuser: `GET /v1/profiles/{id}`) runs pinned to CPU 1, Keel and HAProxy to CPU 0
(`sched_setaffinity`), so the service side's CPU is its own. Each round starts a fresh node and
HAProxy for each configuration (order reversed every other round), spends the key's burst, and,
with the runtime API, waits until HAProxy's table holds the key. Figures per configuration:
refusals/s, p50/p99 as the abuser sees them, and CPU µs per refusal from /proc, for Keel and for
HAProxy. The noise of unchanged code is measured too: the no-runtime-API configuration runs
twice per round (A/A). Results: stdout and a new dated report under docs/performance/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from bench.harness import WrkRun, code_state, ensure_wrk, parse_wrk, pin, run_wrk, wrk_prefix  # noqa: E402
from bench.read_figures import process_cpu_seconds  # noqa: E402

LUA = REPO / "bench" / "rest_read.lua"
PROXY = "HAProxy refuses (KEEL_PROXY_RUNTIME_API)"
KEEL = "Keel refuses"
KEEL_AGAIN = "Keel refuses (A/A)"
CONFIGURATIONS = (PROXY, KEEL, KEEL_AGAIN)
_ROOMY = [{"name": "second", "quota": 1000, "window_seconds": 1, "burst": 1000}]
# Ten units, then one a minute: the abuser is over its quota for the whole run.
PLANS = {
    "tiny": {"policies": [{"name": "slow", "quota": 10, "window_seconds": 600, "burst": 10}]},
    "standard": {"policies": _ROOMY},
    "anonymous": {"policies": _ROOMY},
}
MISSING = "eu1_01M983Y7N41FR15B53RW9D0WSX"


@dataclass
class Measured:
    configuration: str
    run: WrkRun
    keel_cpu_s: float
    haproxy_cpu_s: float
    reached_keel: int  # rate-limit decisions the node took during the run

    @property
    def refusals(self) -> int:
        return self.run.non_2xx_3xx

    def per_refusal_us(self, cpu_s: float) -> float:
        return cpu_s * 1e6 / max(1, self.refusals)


def _decisions(url: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
        if line.startswith("keel_ratelimit_decisions_total{")
    )


def _round(
    configuration: str, env: dict[str, str], logs: Path, abuser: str, args: argparse.Namespace
) -> Measured:
    port = free_port()
    proxy_dir = logs / f"haproxy-{time.monotonic_ns()}"
    node_env = {**env, "KEEL_PORT": str(port)}
    if configuration == PROXY:
        node_env["KEEL_PROXY_RUNTIME_API"] = f"unix:{proxy_dir / 'operator.sock'}"
    key_id = abuser.split("_")[1]
    with (
        server("node", keel_cmd("serve"), node_env, logs / "node.log", port) as node,
        haproxy(proxy_dir, [("node", port)]) as proxy,
        httpx.Client(base_url=proxy.url, headers={"Authorization": f"Bearer {abuser}"}, timeout=10) as client,
    ):
        proxy.wait_for({"node": "UP"})
        statuses = [client.get(f"/v1/profiles/{MISSING}").status_code for _ in range(11)]
        if statuses[-1] != 429:
            raise RuntimeError(f"the key's burst was not spent: {statuses}")
        if configuration == PROXY:
            until(
                lambda: re.search(rf"key={key_id} ", proxy.command("show table keel_refused")) is not None,
                "the refusal reaches HAProxy",
            )
        pin(node.pid, 0)
        pin(proxy.pid, 0)
        wrk = ensure_wrk()
        wrk_env = {**os.environ, "KEEL_BENCH_IDS": str(logs / "ids.txt"), "KEEL_BENCH_TOKEN": abuser}
        common = {"threads": 2, "connections": args.connections, "env": wrk_env, "prefix": wrk_prefix()}
        run_wrk(wrk, proxy.url, LUA, duration=1, **common)  # warm-up
        reached_before = _decisions(f"http://127.0.0.1:{port}")
        keel_before, proxy_before = process_cpu_seconds(node.pid), process_cpu_seconds(proxy.pid)
        done = run_wrk(wrk, proxy.url, LUA, duration=args.duration, **common)
        keel_after, proxy_after = process_cpu_seconds(node.pid), process_cpu_seconds(proxy.pid)
        reached = _decisions(f"http://127.0.0.1:{port}") - reached_before
    run = parse_wrk(configuration, done.stdout)
    if run.requests != run.non_2xx_3xx:
        raise RuntimeError(
            f"{configuration}: {run.requests - run.non_2xx_3xx} of the abuser's requests passed"
        )
    return Measured(configuration, run, keel_after - keel_before, proxy_after - proxy_before, int(reached))


def _spread(values: list[float]) -> float:
    median = statistics.median(values)
    return max(abs(v - median) for v in values) / median if median else 0.0


def _report(results: dict[str, list[Measured]], args: argparse.Namespace) -> str:
    lines = [
        f"# An abuser's flood refused by HAProxy or by Keel ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python -m bench.proxy_refusals --duration {args.duration:g} --rounds {args.rounds}"
        f" --connections {args.connections}`. Code: {code_state()}. One Keel node (SQLite, in-memory"
        " limiter, alone) behind HAProxy from deploy/haproxy/haproxy.cfg; one API key over its quota"
        " (10 units, then one a minute) sending `GET /v1/profiles/{id}` closed-loop with wrk pinned to"
        " CPU 1; Keel and HAProxy pinned to CPU 0. Every answer was a 429 (checked).",
        "",
        f"Medians over {args.rounds} rounds; beside the rates and CPU figures, the largest distance of"
        " a round from the median.",
        "",
        "| configuration | refusals/s | p50 ms | p99 ms | Keel CPU µs per refusal | HAProxy CPU µs per"
        " refusal | requests that reached Keel |",
        "|---|---|---|---|---|---|---|",
    ]
    for configuration in CONFIGURATIONS:
        runs = results[configuration]
        rates = [m.run.requests_per_second for m in runs]
        keel = [m.per_refusal_us(m.keel_cpu_s) for m in runs]
        proxy = [m.per_refusal_us(m.haproxy_cpu_s) for m in runs]
        lines.append(
            f"| {configuration} | {statistics.median(rates):,.0f} (±{_spread(rates):.0%})"
            f" | {statistics.median(m.run.p50_ms for m in runs):.2f}"
            f" | {statistics.median(m.run.p99_ms for m in runs):.2f}"
            f" | {statistics.median(keel):,.1f} (±{_spread(keel):.0%})"
            f" | {statistics.median(proxy):,.1f} (±{_spread(proxy):.0%})"
            f" | {statistics.median(m.reached_keel for m in runs):,.0f} |"
        )

    def ratio(value: str, a: str, b: str) -> float:
        return _figure(results[a], value) / _figure(results[b], value)

    lines += [
        "",
        f"- **Refusals/s, HAProxy refusing ÷ Keel refusing: {ratio('rate', PROXY, KEEL):.2f}**"
        f" (A/A, Keel ÷ Keel: {ratio('rate', KEEL_AGAIN, KEEL):.2f})",
        f"- **Service-side CPU (Keel + HAProxy) per refusal, HAProxy refusing ÷ Keel refusing:"
        f" {ratio('cpu', PROXY, KEEL):.2f}** (A/A: {ratio('cpu', KEEL_AGAIN, KEEL):.2f})",
        f"- p99 of a refusal as the abuser sees it, HAProxy ÷ Keel: {ratio('p99', PROXY, KEEL):.2f}"
        f" (A/A: {ratio('p99', KEEL_AGAIN, KEEL):.2f})",
        "",
    ]
    return "\n".join(lines)


def _figure(runs: list[Measured], value: str) -> float:
    if value == "rate":
        return statistics.median(m.run.requests_per_second for m in runs)
    if value == "cpu":
        return statistics.median(m.per_refusal_us(m.keel_cpu_s + m.haproxy_cpu_s) for m in runs)
    return statistics.median(m.run.p99_ms for m in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="keel-proxy-refusals-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_DATABASE_URL": f"sqlite:///{logs / 'keel.sqlite3'}",
        "KEEL_WORKERS": "1",
        "KEEL_ACCESS_LOG": "false",
        "KEEL_LOG_LEVEL": "error",
        "KEEL_RATELIMIT_PLANS": json.dumps(PLANS),
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
        "KEEL_TRUSTED_PROXY_HOPS": "1",
        "KEEL_HTTP_KEEP_ALIVE_SECONDS": "75",
    }
    keel_output(env, "migrate")
    abuser = keel_output(env, "keys", "create", "--plan", "tiny", "--quiet").strip()
    (logs / "ids.txt").write_text(MISSING + "\n")
    results: dict[str, list[Measured]] = {c: [] for c in CONFIGURATIONS}
    for number in range(1, args.rounds + 1):
        order = CONFIGURATIONS if number % 2 else tuple(reversed(CONFIGURATIONS))
        for configuration in order:
            measured = _round(configuration, env, logs, abuser, args)
            results[configuration].append(measured)
            print(
                f"  round {number} {configuration:<42} {measured.run.requests_per_second:8,.0f} refusals/s"
                f"  p99 {measured.run.p99_ms:6.2f} ms"
                f"  Keel {measured.per_refusal_us(measured.keel_cpu_s):6.1f} µs"
                f"  HAProxy {measured.per_refusal_us(measured.haproxy_cpu_s):5.1f} µs per refusal"
                f"  reached Keel {measured.reached_keel}",
                flush=True,
            )
    report = _report(results, args)
    path = new_result_path("proxy-refusals")
    path.write_text(report)
    print(report)
    print(f"written: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
