"""Read replicas: what a replica takes off the primary, and read-your-writes through tokens.

`python -m bench.replica_reads [--profiles 20000] [--rounds 3] [--duration 8] [--trials 200]`

A throwaway PostgreSQL primary and a streaming replica of it (`pg_basebackup`,
testkit/servers/postgres.py), both on this machine; one `keel serve` (cache, rate limits and
shedding off, so every read reaches the database) per configuration and round.

1. **Reads by id under wrk** (2 threads, 16 connections), alternating per round between Keel
   on the primary alone and Keel with the replica: requests/s, p50/p99, and the CPU seconds per
   read of each PostgreSQL server (its postmaster, backends, and exited backends). The ratio
   that matters is the primary's CPU per read with the replica ÷ without, in the same run; the
   spread between rounds of each figure is printed beside it.
2. **Read-your-writes**, `--trials` times: create a profile, then read it at once without the
   token, then with it back to back (2 ms apart) for 300 ms, counting where those reads went
   from one scrape of /metrics before and one after (with one replica, once it serves a token's
   read it serves every later one, so the count says which read was its first). Figures:
   how many token reads answered 404 (expected 0), how many tokenless ones
   did (the replica had not replayed yet), and the time from the create's answer until the
   replica served the token's read, against the time until the replica had the row by a direct
   SQL poll started at the same moment (the replication delay itself).

Everything shares the machine's 2 cores: absolute rates are this machine's, not PostgreSQL's.
Results: stdout and a new dated report under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import asyncpg
import httpx
from testkit.ports import free_port
from testkit.processes import keel_output, server
from testkit.results import new_result_path
from testkit.seed import seed_profiles
from testkit.servers.postgres import PostgresProcess, postgres_process, postgres_replica

from bench.harness import code_state, ensure_wrk, parse_wrk, run_wrk, serve_cmd
from bench.read_figures import process_tree_cpu_seconds
from keel.service.consistency import TOKEN_NAME

REPO = Path(__file__).resolve().parent.parent
LUA = REPO / "bench" / "rest_read.lua"
WORK = REPO / "bench" / "results"
TOKEN = TOKEN_NAME
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONFIGURATIONS = ("primary only", "with a replica")


def tree_cpu_s(root: int) -> float:
    """CPU seconds of a postmaster, its live backends, and the backends it has reaped."""
    return process_tree_cpu_seconds(root, CLOCK_TICKS)


def _env(primary: PostgresProcess, replica: PostgresProcess | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_DATABASE_URL": primary.url,
        "KEEL_ACCESS_LOG": "false",
        "KEEL_LOG_LEVEL": "warning",
        "KEEL_CACHE_ENABLED": "false",
        "KEEL_RATELIMIT_ENABLED": "false",
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
        "KEEL_WORKERS": "1",
    }
    if replica is not None:
        env["KEEL_DATABASE_REPLICA_URLS"] = replica.url
    return env


def _routed(base: str) -> dict[str, float]:
    return _parse_routed(httpx.get(f"{base}/metrics", timeout=10).text)


def _parse_routed(text: str) -> dict[str, float]:
    found = {"replica": 0.0, "primary": 0.0}
    for line in text.splitlines():
        if line.startswith("keel_replica_routed_reads_total{"):
            server_label = line.split('server="', 1)[1].split('"', 1)[0]
            found[server_label] = float(line.rsplit(" ", 1)[1])
    return found


async def _routed_async(client: httpx.AsyncClient) -> dict[str, float]:
    return _parse_routed((await client.get("/metrics")).text)


def _wait_replica_up(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        if 'keel_replica_up{replica="replica-0"} 1.0' in text:
            return
        time.sleep(0.05)
    raise RuntimeError("Keel did not find its replica within 30 s")


def _reads(
    args: argparse.Namespace, primary: PostgresProcess, replica: PostgresProcess, token: str, ids: Path
) -> list[dict[str, float | str]]:
    wrk = ensure_wrk()
    rows: list[dict[str, float | str]] = []
    for number in range(1, args.rounds + 1):
        order = CONFIGURATIONS if number % 2 else tuple(reversed(CONFIGURATIONS))
        for configuration in order:
            port = free_port()
            env = _env(primary, replica if configuration == "with a replica" else None)
            log = WORK / "replica-reads-keel.log"
            with server("keel", serve_cmd("keel", port), env, log, port):
                base = f"http://127.0.0.1:{port}"
                if configuration == "with a replica":
                    _wait_replica_up(base)
                wrk_env = {**os.environ, "KEEL_BENCH_IDS": str(ids), "KEEL_BENCH_TOKEN": token}
                run_wrk(wrk, base, LUA, threads=2, connections=16, duration=2, env=wrk_env)  # warm-up
                primary_before, replica_before = tree_cpu_s(primary.pid), tree_cpu_s(replica.pid)
                done = run_wrk(wrk, base, LUA, threads=2, connections=16, duration=args.duration, env=wrk_env)
                primary_after, replica_after = tree_cpu_s(primary.pid), tree_cpu_s(replica.pid)
                run = parse_wrk(configuration, done.stdout)
                routed = _routed(base)
            reads = max(run.requests, 1)
            row: dict[str, float | str] = {
                "configuration": configuration,
                "round": number,
                "rps": run.requests_per_second,
                "p50": run.p50_ms,
                "p99": run.p99_ms,
                "non_2xx": run.non_2xx_3xx,
                "primary_us": (primary_after - primary_before) * 1e6 / reads,
                "replica_us": (replica_after - replica_before) * 1e6 / reads,
                "routed_replica": routed["replica"],
                "routed_primary": routed["primary"],
            }
            print(
                f"  round {number} {configuration:<15} {run.requests_per_second:>7,.0f} req/s"
                f"  p50 {run.p50_ms:5.1f}  p99 {run.p99_ms:5.1f} ms  primary {row['primary_us']:5.0f} µs/read"
                f"  replica {row['replica_us']:5.0f} µs/read  non-2xx {run.non_2xx_3xx}",
                flush=True,
            )
            rows.append(row)
    return rows


async def _ryw(
    args: argparse.Namespace, primary: PostgresProcess, replica: PostgresProcess, token: str
) -> dict[str, object]:
    port = free_port()
    env = _env(primary, replica)
    with server("keel", serve_cmd("keel", port), env, WORK / "replica-ryw-keel.log", port):
        base = f"http://127.0.0.1:{port}"
        _wait_replica_up(base)
        headers = {"Authorization": f"Bearer {token}"}
        standby = await asyncpg.connect(replica.url)
        token_404 = tokenless_404 = 0
        served_at: list[float] = []
        replicated_at: list[float] = []
        first_on_primary = 0
        never_served = 0
        try:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:
                for trial in range(args.trials):
                    handle = f"ryw_{os.getpid()}_{trial}"
                    body = {
                        "handle": handle,
                        "emails": [{"address": f"{handle}@example.com", "primary": True}],
                    }
                    created = await client.post("/v1/profiles", json=body)
                    answered = time.perf_counter()
                    if created.status_code != 201:
                        raise RuntimeError(f"create failed: {created.status_code} {created.text}")
                    profile_id, position = created.json()["id"], created.headers[TOKEN]
                    row_seen = asyncio.create_task(_row_on_replica(standby, profile_id, answered))
                    tokenless = await client.get(f"/v1/profiles/{profile_id}")
                    tokenless_404 += tokenless.status_code == 404
                    # Token reads back to back for 300 ms, the routing counters read once before
                    # and once after: with one replica, once it serves a token's read it serves
                    # every later one (its replayed position only grows), so the first
                    # `primary` reads went to the primary and the next one is the first the
                    # replica served. Scraping /metrics between reads would time the scrape.
                    before = await _routed_async(client)
                    sent: list[float] = []
                    while time.perf_counter() - answered < 0.3:
                        sent.append(time.perf_counter() - answered)
                        read = await client.get(f"/v1/profiles/{profile_id}", headers={TOKEN: position})
                        token_404 += read.status_code != 200
                        await asyncio.sleep(0.002)
                    after = await _routed_async(client)
                    on_primary = round(after["primary"] - before["primary"])
                    on_replica = round(after["replica"] - before["replica"])
                    if on_primary + on_replica != len(sent):
                        raise RuntimeError(f"{len(sent)} reads, {on_primary} + {on_replica} counted")
                    first_on_primary += on_primary > 0
                    if on_replica:
                        served_at.append(sent[on_primary])
                    else:
                        never_served += 1
                    replicated_at.append(await row_seen)
        finally:
            await standby.close()
    return {
        "trials": args.trials,
        "token_not_200": token_404,
        "tokenless_404": tokenless_404,
        "first_token_read_on_primary": first_on_primary,
        "not_served_by_the_replica_within_300_ms": never_served,
        "served_ms": [s * 1000 for s in served_at],
        "replicated_ms": [s * 1000 for s in replicated_at],
    }


async def _row_on_replica(standby: asyncpg.Connection, profile_id: str, since: float) -> float:
    while not await standby.fetchval("SELECT count(*) FROM profiles WHERE id = $1", profile_id):  # noqa: ASYNC110
        await asyncio.sleep(0.001)  # polling another server: no event to wait on
    return time.perf_counter() - since


def _median_spread(values: list[float]) -> str:
    median = statistics.median(values)
    spread = max(abs(v - median) for v in values) / median if median else 0.0
    return f"{median:,.0f} (±{spread:.0%})"


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{statistics.median(ordered):.1f} / {p90:.1f} / {ordered[-1]:.1f}"


def _report(args: argparse.Namespace, rows: list[dict[str, float | str]], ryw: dict[str, object]) -> str:
    def figure(configuration: str, key: str) -> list[float]:
        return [float(r[key]) for r in rows if r["configuration"] == configuration]

    primary_ratio = statistics.median(figure("with a replica", "primary_us")) / statistics.median(
        figure("primary only", "primary_us")
    )
    rps_ratio = statistics.median(figure("with a replica", "rps")) / statistics.median(
        figure("primary only", "rps")
    )
    served = ryw["served_ms"]
    replicated = ryw["replicated_ms"]
    assert isinstance(served, list)
    assert isinstance(replicated, list)
    ratio = statistics.median(served) / statistics.median(replicated)
    lines = [
        f"# Read replicas: reads taken off the primary, and read-your-writes ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python -m bench.replica_reads --profiles {args.profiles} --rounds {args.rounds}"
        f" --duration {args.duration:g} --trials {args.trials}`. Code: {code_state()}."
        " A throwaway primary and a streaming replica (`pg_basebackup`) on this 2-core machine,"
        " shared with Keel and the load generator: the CPU per read is the figure to read, not the rates.",
        "",
        "## Reads by id (wrk, 2 threads, 16 connections, cache off)",
        "",
        f"Medians over {args.rounds} rounds, alternating; beside each, the largest distance of a round from"
        " the median (the noise a ratio must exceed).",
        "",
        "| configuration | req/s | p50 ms | p99 ms | primary CPU µs/read | replica CPU µs/read |",
        "|---|---|---|---|---|---|",
    ]
    for configuration in CONFIGURATIONS:
        lines.append(
            f"| {configuration} | {_median_spread(figure(configuration, 'rps'))}"
            f" | {statistics.median(figure(configuration, 'p50')):.1f}"
            f" | {statistics.median(figure(configuration, 'p99')):.1f}"
            f" | {_median_spread(figure(configuration, 'primary_us'))}"
            f" | {_median_spread(figure(configuration, 'replica_us'))} |"
        )
    non_2xx = sum(float(r["non_2xx"]) for r in rows)
    lines += [
        "",
        f"- **Primary CPU per read, with a replica ÷ primary only: {primary_ratio:.3f}**",
        f"- Requests/s, with a replica ÷ primary only: {rps_ratio:.2f}",
        f"- Non-2xx answers over all runs: {non_2xx:.0f}",
        "",
        "## Read-your-writes",
        "",
        f"{ryw['trials']} trials: create, read at once without the token, then read with it until the"
        " replica serves it: token reads back to back (2 ms apart) for 300 ms, counted by where they"
        " went (one scrape of /metrics before and after). Keel polls the replica's position every 0.2 s,"
        " and sooner, no closer than 20 ms apart, when a token read finds no replica there.",
        "",
        f"- token reads that did not answer 200: **{ryw['token_not_200']}**",
        "- tokenless reads at once that answered 404 (the replica had not replayed yet):"
        f" {ryw['tokenless_404']}",
        f"- trials whose first token read went to the primary: {ryw['first_token_read_on_primary']}"
        f" of {ryw['trials']}; whose token reads the replica never served within 300 ms:"
        f" {ryw['not_served_by_the_replica_within_300_ms']}",
        "",
        "| from the create's answer until… | median / p90 / max ms |",
        "|---|---|",
        f"| the replica has the row (direct SQL poll) | {_quantiles(replicated)} |",
        f"| Keel serves the token's read from the replica | {_quantiles(served)} |",
        "",
        f"Median Keel-serves-from-replica ÷ median replica-has-the-row: {ratio:.1f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    with postgres_process(durable=True) as primary:
        keel_output(_env(primary, None), "migrate", timeout=300)
        _, ids = asyncio.run(seed_profiles(primary.url, args.profiles, "eu1"))
        ids_file = WORK / "replica_reads_ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        token = keel_output(_env(primary, None), "keys", "create", "--quiet").strip()
        with postgres_replica(primary, durable=True) as replica:
            rows = _reads(args, primary, replica, token, ids_file)
            ryw = asyncio.run(_ryw(args, primary, replica, token))
    report = _report(args, rows, ryw)
    path = new_result_path("replica-reads")
    path.write_text(report)
    print(report)
    print(f"written: {path.relative_to(REPO)}")
    print(json.dumps({k: v for k, v in ryw.items() if not isinstance(v, list)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
