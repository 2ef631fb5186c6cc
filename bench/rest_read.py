"""REST read benchmark: Keel's `GET /v1/profiles/{id}` against a lean FastAPI + asyncpg baseline
(bench/baseline_app.py: same SQL, same pool without the reset round trip, response written
directly) on the same PostgreSQL data, driven by wrk on loopback. Two figures, measured apart in
the same run, each Keel req/s ÷ baseline req/s (and Keel p99 ÷ baseline p99):

- uncached: Keel with its profile cache off (KEEL_CACHE_ENABLED=false), random ids out of the
  sampled working set, against the baseline on the same ids: both read PostgreSQL every time;
- cache hit: Keel with its cache on and a hot set of `--hot-ids` ids (fits the cache), against
  the baseline reading the same hot set from PostgreSQL.

    python bench/rest_read.py [--duration 20] [--rounds 5] [--connections 32] [--profiles 100000]
                              [--hot-ids 16] [--keel-log file|devnull] [--py-spy]

Each round starts five servers one at a time (order reversed every other round): the baseline
on random ids twice (its A/A pair: the noise of the measurement), Keel uncached, the baseline on
the hot set, Keel with its cache. Figures are medians over rounds. Keel's own cache counters
must show that the uncached run never used the cache and that the cache-hit run was served from
it (bench/read_figures.py); any non-2xx answer or socket error voids the run. Exit 1 then.
Results: stdout, bench/results/rest_read.json, and a new dated report under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, server, stop  # noqa: E402
from testkit.results import new_result_path  # noqa: E402
from testkit.seed import seed_profiles  # noqa: E402

from bench.harness import (  # noqa: E402
    WrkRun,
    code_state,
    ensure_wrk,
    parse_wrk,
    run_on_postgres,
    run_wrk,
    serve_cmd,
)
from bench.read_figures import (  # noqa: E402
    CacheUse,
    Comparison,
    Noise,
    aa_noise,
    allowed_misses,
    cache_failures,
    cache_lookups,
    compare,
    cpu_ratio,
    cpu_seconds,
    cpu_us_per_request,
)

BENCH = REPO / "bench"
RESULTS = BENCH / "results"
LUA = BENCH / "rest_read.lua"
BIN = Path(sys.executable).parent
PATH_LABEL = "GET /v1/profiles/{id}"
_HUGE = {"policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}], "concurrency": 100_000}
BENCH_PLANS = {"standard": _HUGE, "anonymous": _HUGE, "bench": _HUGE}
CACHE_FRESH_S = 5.0  # Keel's default KEEL_CACHE_FRESH_SECONDS, set explicitly: the miss budget depends on it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# With --pin: the CPU wrk runs on, as a `taskset` prefix (empty when not pinned). Set by `_pin`.
WRK_PREFIX: list[str] = []


@dataclass(frozen=True)
class Phase:
    """One measured run of a round: which server, on which ids, with Keel's cache on or off."""

    label: str
    server: str  # "keel" or "baseline"
    ids: str  # "random" or "hot"
    cache: bool | None = None  # Keel only


BASELINE_A = Phase("baseline", "baseline", "random")
KEEL_UNCACHED = Phase("keel uncached", "keel", "random", cache=False)
BASELINE_HOT = Phase("baseline hot", "baseline", "hot")
KEEL_CACHED = Phase("keel cache hit", "keel", "hot", cache=True)
BASELINE_B = Phase("baseline A/A", "baseline", "random")
PHASES = (BASELINE_A, KEEL_UNCACHED, BASELINE_HOT, KEEL_CACHED, BASELINE_B)


# --------------------------------------------------------------------------- wrk and checks


def _wrk(
    wrk: str, server: str, port: int, env: dict[str, str], args: argparse.Namespace, duration: float
) -> WrkRun:
    done = run_wrk(
        wrk,
        f"http://127.0.0.1:{port}",
        LUA,
        threads=args.threads,
        connections=args.connections,
        duration=duration,
        env=env,
        prefix=WRK_PREFIX,
    )
    return parse_wrk(server, done.stdout)


def _check_one(server: str, port: int, profile_id: str, token: str) -> set[str]:
    """One request by hand: it must be a 200 carrying the profile asked for (not a fast 401/404)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/profiles/{profile_id}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read()[:500]
        raise RuntimeError(f"{server}: GET /v1/profiles/{profile_id} -> {error.code}: {detail!r}") from None
    if body.get("id") != profile_id:
        raise RuntimeError(f"{server}: asked for {profile_id}, got {body!r}")
    return set(body)


def _server_cpu_s(pid: int) -> float:
    """The server process's CPU seconds so far (it is the process Popen started: `keel` and
    `python -m uvicorn` exec no further process)."""
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), CLOCK_TICKS)


def _pin(args: argparse.Namespace) -> str:
    """Split the machine like a client and a service: this process, and so PostgreSQL and every
    server it starts next, on the first CPU; wrk on the others. Returns how, for the report."""
    cpus = sorted(os.sched_getaffinity(0))
    if not args.pin:
        return f"nothing pinned: wrk, the server and PostgreSQL share the machine's {len(cpus)} CPUs"
    if len(cpus) < 2 or shutil.which("taskset") is None:
        raise RuntimeError("--pin needs 2 CPUs and taskset (run with --no-pin otherwise)")
    service, client = cpus[:1], cpus[1:]
    os.sched_setaffinity(0, service)
    WRK_PREFIX[:] = ["taskset", "-c", ",".join(map(str, client))]
    return (
        f"pinned: the server and PostgreSQL on CPU {service[0]}, wrk on CPU "
        f"{','.join(map(str, client))} (other work on the machine is not pinned away)"
    )


def _lookups(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return cache_lookups(response.read().decode())


# --------------------------------------------------------------------------- main


def _report_run(run: WrkRun, label: str, extra: str = "") -> None:
    flag = "  <-- FAILED RESPONSES/ERRORS" if run.failed else ""
    print(
        f"  {label:<28} {run.requests_per_second:>8,.0f} req/s  p50 {run.p50_ms:6.1f} ms  "
        f"p99 {run.p99_ms:6.1f} ms  non-2xx {run.non_2xx_3xx}  socket errors "
        f"{sum(run.socket_errors.values())}  (load avg {run.load_average_1m:.1f}){extra}{flag}",
        flush=True,
    )


def _prepare(url: str, args: argparse.Namespace, env: dict[str, str]) -> tuple[list[str], str]:
    """Migrate, seed, and create the key: the sampled ids and the token."""
    print("migrating ...", flush=True)
    migrated = subprocess.run(
        keel_cmd("migrate"), env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"keel migrate failed:\n{migrated.stdout}\n{migrated.stderr}")
    started = time.monotonic()
    inserted, ids = asyncio.run(asyncio.wait_for(seed_profiles(url, args.profiles, "eu1"), 900))
    print(
        f"seeded {inserted:,} profiles ({args.profiles - inserted:,} already there) in "
        f"{time.monotonic() - started:.1f}s; sampled {len(ids):,} ids",
        flush=True,
    )
    created = subprocess.run(
        keel_cmd(
            "keys", "create", "--scopes", "profiles:read", "--name", "bench", "--plan", "bench", "--quiet"
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    tokens = [line.strip() for line in created.stdout.splitlines() if line.strip().startswith("keel_")]
    if created.returncode != 0 or not tokens:
        raise RuntimeError(f"keel keys create failed:\n{created.stdout}\n{created.stderr}")
    return ids, tokens[-1]


def _benchmark(url: str, args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    src_state = code_state()
    print(f"code: {src_state}", flush=True)
    wrk = ensure_wrk()
    placement: str = args.placement
    print(placement, flush=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    # Keel decides rate limits on every request (in process, its default), under a plan large
    # enough that wrk's load is never refused: the figure includes the limiter's cost. Load
    # shedding is off: wrk keeps 32 requests outstanding and resends a refused one at once
    # (it ignores Retry-After), so with shedding on this would measure refusals, not reads.
    env = {
        **base_env,
        "KEEL_DATABASE_URL": url,
        "KEEL_RATELIMIT_PLANS": json.dumps(BENCH_PLANS),
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
    }
    ids, token = _prepare(url, args, env)
    ids_files = {"random": RESULTS / "rest_read_ids.txt", "hot": RESULTS / "rest_read_hot_ids.txt"}
    ids_files["random"].write_text("\n".join(ids) + "\n")
    ids_files["hot"].write_text("\n".join(ids[: args.hot_ids]) + "\n")
    wrk_envs = {
        kind: {**base_env, "KEEL_BENCH_IDS": str(path), "KEEL_BENCH_TOKEN": token}
        for kind, path in ids_files.items()
    }
    server_envs = {
        None: env,
        False: {**env, "KEEL_CACHE_ENABLED": "false"},
        True: {**env, "KEEL_CACHE_ENABLED": "true", "KEEL_CACHE_FRESH_SECONDS": str(CACHE_FRESH_S)},
    }

    keel_log = RESULTS / "keel-serve.log" if args.keel_log == "file" else None
    baseline_log = RESULTS / "baseline-serve.log"
    for log in (keel_log, baseline_log):
        if log is not None:
            log.write_text("")
    keel_log_label = str(keel_log.relative_to(REPO)) if keel_log else "/dev/null"
    logs = {"keel": keel_log, "baseline": baseline_log}

    runs: dict[str, list[WrkRun]] = {phase.label: [] for phase in PHASES}
    cpu_us: dict[str, list[float]] = {phase.label: [] for phase in PHASES}
    cache_uses: dict[str, list[CacheUse]] = {KEEL_UNCACHED.label: [], KEEL_CACHED.label: []}
    invalid: list[str] = []
    fields: dict[str, set[str]] = {}
    print(
        f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, "
        f"{args.warmup:g}s warm-up per run, {args.rounds} round(s) of {len(PHASES)} runs; "
        f"hot set {args.hot_ids} ids; keel stdout -> {keel_log_label}",
        flush=True,
    )
    for round_number in range(args.rounds):
        order = PHASES if round_number % 2 == 0 else tuple(reversed(PHASES))
        for phase in order:
            port = free_port()
            wrk_env = wrk_envs[phase.ids]
            with server(
                phase.label, serve_cmd(phase.server, port), server_envs[phase.cache], logs[phase.server], port
            ) as served:
                fields[phase.server] = _check_one(phase.label, port, ids[0], token)
                if args.warmup > 0:
                    warmup = _wrk(wrk, phase.label, port, wrk_env, args, args.warmup)
                    if warmup.failed:
                        _report_run(warmup, f"{phase.label} warm-up")
                        invalid.append(f"{phase.label} warm-up: non-2xx or socket errors")
                before = _lookups(port) if phase.server == "keel" else {}
                cpu_before = _server_cpu_s(served.pid)
                run = _wrk(wrk, phase.label, port, wrk_env, args, args.duration)
                cpu_after = _server_cpu_s(served.pid)
                after = _lookups(port) if phase.server == "keel" else {}
            runs[phase.label].append(run)
            cpu_us[phase.label].append(cpu_us_per_request(cpu_before, cpu_after, max(run.requests, 1)))
            extra = f"  server CPU {cpu_us[phase.label][-1]:,.0f} us/request"
            if phase.server == "keel":
                use = CacheUse.between(before, after)
                cache_uses[phase.label].append(use)
                kind = "cached" if phase.cache else "uncached"
                budget = allowed_misses(args.hot_ids, args.duration, CACHE_FRESH_S)
                failures = cache_failures(kind, run.requests, use, budget)
                invalid += [f"round {round_number + 1}: {f}" for f in failures]
                extra += f"  without PostgreSQL {use.without_database:,}/{run.requests:,}"
            if run.failed:
                invalid.append(f"round {round_number + 1} {phase.label}: non-2xx or socket errors")
            _report_run(run, f"round {round_number + 1} {phase.label}", extra)

    if fields.get("keel") != fields.get("baseline"):
        invalid.append(
            f"response fields differ: keel {sorted(fields.get('keel', ()))} vs baseline "
            f"{sorted(fields.get('baseline', ()))}"
        )

    profile_summary = (
        _py_spy(
            args,
            server_envs[args.py_spy_cache == "on" if args.py_spy_server == "keel" else None],
            wrk,
            wrk_envs["random" if args.py_spy_cache == "off" else "hot"],
            logs[args.py_spy_server],
        )
        if args.py_spy
        else None
    )
    if args.rounds == 0:
        print("--rounds 0: no measured runs, nothing compared")
        return 0

    def figures(phase: Phase) -> tuple[list[float], list[float]]:
        return [r.requests_per_second for r in runs[phase.label]], [r.p99_ms for r in runs[phase.label]]

    # The uncached runs' baseline in each round: the mean of its A/A pair, which brackets them.
    baseline_rps = [
        statistics.fmean(p) for p in zip(figures(BASELINE_A)[0], figures(BASELINE_B)[0], strict=True)
    ]
    baseline_p99 = [
        statistics.fmean(p) for p in zip(figures(BASELINE_A)[1], figures(BASELINE_B)[1], strict=True)
    ]
    uncached = compare(*figures(KEEL_UNCACHED), baseline_rps, baseline_p99)
    cached = compare(*figures(KEEL_CACHED), *figures(BASELINE_HOT))
    noise = aa_noise(figures(BASELINE_A)[0], figures(BASELINE_B)[0])
    p99_noise = aa_noise(figures(BASELINE_A)[1], figures(BASELINE_B)[1])
    baseline_cpu = [
        statistics.fmean(p) for p in zip(cpu_us[BASELINE_A.label], cpu_us[BASELINE_B.label], strict=True)
    ]
    cpu = CpuFigures(
        keel_uncached_us=statistics.median(cpu_us[KEEL_UNCACHED.label]),
        baseline_us=statistics.median(baseline_cpu),
        uncached_ratio=cpu_ratio(cpu_us[KEEL_UNCACHED.label], baseline_cpu),
        keel_cached_us=statistics.median(cpu_us[KEEL_CACHED.label]),
        baseline_hot_us=statistics.median(cpu_us[BASELINE_HOT.label]),
        cached_ratio=cpu_ratio(cpu_us[KEEL_CACHED.label], cpu_us[BASELINE_HOT.label]),
        aa=aa_noise(cpu_us[BASELINE_A.label], cpu_us[BASELINE_B.label]),
    )
    lines = _summary(uncached, cached, noise, p99_noise) + cpu.lines()
    if invalid:
        lines.insert(0, "!!! INVALID: " + "; ".join(invalid))
    print(
        f"\n== median of {args.rounds} round(s), {args.duration:g}s each, {args.connections} connections, "
        f"{args.profiles:,} profiles; code {src_state} =="
    )
    print("\n".join(lines), flush=True)
    config = {
        "duration_s": args.duration,
        "connections": args.connections,
        "threads": args.threads,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "profiles": args.profiles,
        "hot_ids": args.hot_ids,
        "sampled_ids": len(ids),
        "keel_stdout": keel_log_label,
        "cpus": os.cpu_count(),
        "placement": placement,
        "code": src_state,
        "postgres": "KEEL_BENCH_POSTGRES_URL"
        if os.environ.get("KEEL_BENCH_POSTGRES_URL")
        else "throwaway (testkit.servers.postgres)",
    }
    result: dict[str, Any] = {
        "summary": lines,
        "valid": not invalid,
        "invalid": invalid,
        "uncached": {
            **asdict(uncached),
            "ratio_rps": uncached.throughput_ratio,
            "ratio_p99": uncached.p99_ratio,
        },
        "cache_hit": {**asdict(cached), "ratio_rps": cached.throughput_ratio, "ratio_p99": cached.p99_ratio},
        "aa_noise": {"rps_ratios": noise.ratios, "p99_ratios": p99_noise.ratios},
        "server_cpu_us_per_request": {
            **{k: v for k, v in asdict(cpu).items() if k != "aa"},
            "aa_ratios": cpu.aa.ratios,
            "runs": cpu_us,
        },
        "runs": {label: [asdict(r) for r in rs] for label, rs in runs.items()},
        "cache_use": {label: [asdict(u) for u in us] for label, us in cache_uses.items()},
        "config": config,
        "py_spy": profile_summary,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.output}")
    if not invalid:
        doc = _write_doc(args, lines, runs, cpu_us, config)
        print(f"written {doc.relative_to(REPO)}")
    if invalid:
        print("\n" + "!" * 78, file=sys.stderr)
        for reason in invalid:
            print(f"!!! INVALID: {reason}: the figures above are NOT trustworthy", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        return 1
    return 0


def _summary(uncached: Comparison, cached: Comparison, noise: Noise, p99_noise: Noise) -> list[str]:
    return [
        f"uncached  keel {uncached.keel_rps:>7,.0f} req/s p99 {uncached.keel_p99_ms:6.1f} ms | baseline "
        f"{uncached.baseline_rps:>7,.0f} req/s p99 {uncached.baseline_p99_ms:6.1f} ms | "
        f"ratio {uncached.throughput_ratio:.2f}x throughput, {uncached.p99_ratio:.2f}x p99",
        f"cache hit keel {cached.keel_rps:>7,.0f} req/s p99 {cached.keel_p99_ms:6.1f} ms | baseline "
        f"{cached.baseline_rps:>7,.0f} req/s p99 {cached.baseline_p99_ms:6.1f} ms | "
        f"ratio {cached.throughput_ratio:.2f}x throughput, {cached.p99_ratio:.2f}x p99",
        f"A/A noise (baseline vs itself, same round): throughput median ±{noise.median_deviation:.1%}, "
        f"worst ±{noise.worst_deviation:.1%}; p99 median ±{p99_noise.median_deviation:.1%}, "
        f"worst ±{p99_noise.worst_deviation:.1%}",
    ]


@dataclass(frozen=True)
class CpuFigures:
    """The servers' CPU microseconds per request (medians over rounds) and the ratios, baseline ÷
    Keel: a secondary figure that a busy machine moves much less than wall-clock throughput."""

    keel_uncached_us: float
    baseline_us: float
    uncached_ratio: float
    keel_cached_us: float
    baseline_hot_us: float
    cached_ratio: float
    aa: Noise

    def lines(self) -> list[str]:
        return [
            f"server CPU per request, uncached  keel {self.keel_uncached_us:>6,.0f} us | baseline "
            f"{self.baseline_us:>6,.0f} us | ratio {self.uncached_ratio:.2f}x (baseline ÷ keel)",
            f"server CPU per request, cache hit keel {self.keel_cached_us:>6,.0f} us | baseline "
            f"{self.baseline_hot_us:>6,.0f} us | ratio {self.cached_ratio:.2f}x (baseline ÷ keel)",
            f"A/A noise of CPU per request: median ±{self.aa.median_deviation:.1%}, "
            f"worst ±{self.aa.worst_deviation:.1%}",
        ]


def _write_doc(
    args: argparse.Namespace,
    lines: list[str],
    runs: dict[str, list[WrkRun]],
    cpu_us: dict[str, list[float]],
    config: dict[str, Any],
) -> Path:
    """A new dated report under docs/performance/ (a second run the same day gets a suffix)."""
    path = new_result_path("rest-read")
    today = datetime.date.today().isoformat()
    command = "python bench/rest_read.py " + " ".join(sys.argv[1:])
    table = ["| round | " + " | ".join(p.label for p in PHASES) + " |", "|---" * (len(PHASES) + 1) + "|"]
    for i in range(args.rounds):
        cells = [
            f"{runs[p.label][i].requests_per_second:,.0f} req/s, p99 {runs[p.label][i].p99_ms:.1f} ms, "
            f"{cpu_us[p.label][i]:,.0f} µs CPU/req"
            for p in PHASES
        ]
        table.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    loads = [r.load_average_1m for rs in runs.values() for r in rs]
    text = [
        f"# REST read: Keel vs a lean baseline ({today})",
        "",
        f"Command: `{command.strip()}` (code {config['code']}).",
        "",
        f"{args.rounds} rounds of {len(PHASES)} runs (order reversed every other round), each a fresh "
        f"server, {args.warmup:g} s warm-up, then `wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s` on loopback; {args.profiles:,} seeded profiles, random ids out of "
        f"{config['sampled_ids']:,} sampled, hot set {args.hot_ids} ids. Baseline: bench/baseline_app.py "
        "(same SQL, Keel's pool without the reset round trip, response written directly). Keel: default "
        "settings, rate limits decided on every request under a plan that never refuses, load shedding "
        f"off; uncached = `KEEL_CACHE_ENABLED=false`. {config['placement'][0].upper()}"
        f"{config['placement'][1:]} (1-minute load average {min(loads):.1f}-{max(loads):.1f} at the end "
        "of the runs; it includes whatever else ran on the machine). Server CPU per request: the "
        "server process's user + system CPU time over the measured run (/proc/<pid>/stat) ÷ the "
        "requests wrk counted; its ratio is baseline ÷ Keel.",
        "",
        "Medians over rounds; each ratio is the median over rounds of Keel ÷ the baseline of the same "
        "round (for uncached reads, the mean of the baseline's A/A pair). A ratio is known only to within "
        "about the A/A noise printed under it.",
        "",
        "```",
        *lines,
        "```",
        "",
        *table,
        "",
    ]
    path.write_text("\n".join(text))
    return path


def _py_spy(
    args: argparse.Namespace, env: dict[str, str], wrk: str, wrk_env: dict[str, str], log: Path | None
) -> str:
    """One extra run of --py-spy-server (keel by default; not counted above), sampled by
    `py-spy record --pid` after the warm-up (so start-up and imports stay out of the profile);
    returns the summary text."""
    from bench.pyspy_summary import summarise

    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("--py-spy: py-spy not found (pip install py-spy into the venv)")
    name = args.py_spy_server
    raw = RESULTS / f"{name}-pyspy.txt"
    raw.unlink(missing_ok=True)
    port = free_port()
    duration = args.py_spy_duration
    with server(name, serve_cmd(name, port), env, log, port) as served:
        if args.warmup > 0:
            _wrk(wrk, name, port, wrk_env, args, args.warmup)
        # --gil: only the thread holding the GIL, i.e. where the process spends CPU in Python (the
        # anyio worker threads would otherwise add their waiting). Blocking mode (the default) gives
        # whole stacks; --nonblocking truncates ~1/3 of them but allows high rates.
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(served.pid),
            "--duration",
            f"{duration:.0f}",
            "--rate",
            str(args.py_spy_rate),
            "--gil",
            "--full-filenames",
            "--format",
            "raw",
            "-o",
            str(raw),
        ]
        cmd += ["--nonblocking"] if args.py_spy_nonblocking else []
        cmd += ["--native"] if args.py_spy_native else []
        print(f"\nprofiling {name} for {duration:.0f}s under load: {' '.join(cmd)}", flush=True)
        with subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        ) as recorder:
            try:
                run = _wrk(wrk, f"{name} (py-spy)", port, wrk_env, args, duration)
                _, err = recorder.communicate(timeout=60)
            finally:
                stop(recorder, signal.SIGINT)
        if recorder.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({recorder.returncode}): {err.decode(errors='replace')}")
    _report_run(run, f"{name} under py-spy (not counted)")
    summary = summarise(raw, 15)
    print(summary, flush=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles to seed")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the five runs (medians over rounds); 0 with --py-spy: only profile",
    )
    parser.add_argument(
        "--hot-ids", type=int, default=16, help="ids in the cache-hit run's hot set (must fit Keel's cache)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "rest_read.json", help="JSON results file")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    parser.add_argument(
        "--keel-log",
        choices=["file", "devnull"],
        default="file",
        help="keel stdout (JSON logs): bench/results/keel-serve.log or /dev/null",
    )
    parser.add_argument(
        "--py-spy", action="store_true", help="afterwards, profile one more run with py-spy (not counted)"
    )
    parser.add_argument(
        "--py-spy-server", choices=["keel", "baseline"], default="keel", help="which server --py-spy profiles"
    )
    parser.add_argument(
        "--py-spy-cache",
        choices=["on", "off"],
        default="on",
        help="the profiled run: Keel's cache on and the hot set (cache hits), or off and random ids",
    )
    parser.add_argument("--py-spy-duration", type=float, default=30.0, help="seconds of profiled load")
    parser.add_argument(
        "--py-spy-rate",
        type=int,
        default=100,
        help="samples/s; blocking sampling slows Keel down a lot above ~100",
    )
    parser.add_argument(
        "--py-spy-nonblocking",
        action="store_true",
        help="do not pause Keel per sample (faster, but ~1/3 of stacks come out truncated)",
    )
    parser.add_argument("--py-spy-native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="server and PostgreSQL on the first CPU, wrk on the others (taskset; needs 2 CPUs)",
    )
    args = parser.parse_args()
    args.placement = _pin(args)  # before PostgreSQL starts, so that it inherits the service CPU
    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
