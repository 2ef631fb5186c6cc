"""REST read benchmark: Keel's `GET /v1/profiles/{id}` against a minimal FastAPI + asyncpg baseline
(bench/baseline_app.py) on the same PostgreSQL data, driven by wrk on loopback.

    python bench/rest_read.py [--duration 20] [--connections 32] [--profiles 100000] [--rounds 2]
                              [--keel-log file|devnull] [--py-spy]

Starts a throwaway PostgreSQL (or uses KEEL_BENCH_POSTGRES_URL), migrates and seeds it, creates a
profiles:read API key, then runs baseline and Keel one at a time, alternating, `--rounds` times
each, and reports the median. Exits 1 if any run saw non-2xx responses or socket errors.
Results: stdout and bench/results/rest_read.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `devtools` (and `bench`) when run as a script

from bench.harness import (  # noqa: E402
    WrkRun,
    ensure_wrk,
    free_port,
    keel_cmd,
    parse_wrk,
    run_on_postgres,
    seed_profiles,
    serve_cmd,
    server,
    stop,
)

BENCH = REPO / "bench"
RESULTS = BENCH / "results"
LUA = BENCH / "rest_read.lua"
BIN = Path(sys.executable).parent
TARGET_RATIO = 0.6
PATH_LABEL = "GET /v1/profiles/{id}"
_HUGE = {"policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}], "concurrency": 100_000}
BENCH_PLANS = {"standard": _HUGE, "anonymous": _HUGE, "bench": _HUGE}


# --------------------------------------------------------------------------- wrk


def _wrk(
    wrk: str, server: str, port: int, env: dict[str, str], args: argparse.Namespace, duration: float
) -> WrkRun:
    cmd = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
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


# --------------------------------------------------------------------------- main


def _src_state() -> str:
    """Which code was measured: HEAD plus a hash of uncommitted changes under src/."""

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, timeout=30, check=False)
        return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "src")
    changed = git("status", "--porcelain", "--", "src").splitlines()
    if not diff and not changed:
        return f"{head} (src clean)"
    digest = hashlib.sha256(diff.encode()).hexdigest()[:10]
    return f"{head} + uncommitted src changes ({len(changed)} files, diff sha256 {digest})"


def _median(runs: list[WrkRun]) -> dict[str, float]:
    keys = ("requests_per_second", "p50_ms", "p99_ms")
    return {k: statistics.median(getattr(r, k) for r in runs) for k in keys}


def _line(name: str, m: dict[str, float]) -> str:
    return (
        f"{name:<8} {PATH_LABEL}: {m['requests_per_second']:>7,.0f} req/s  "
        f"p50 {m['p50_ms']:6.1f} ms  p99 {m['p99_ms']:6.1f} ms"
    )


def _report_run(run: WrkRun, label: str) -> None:
    flag = "  <-- FAILED RESPONSES/ERRORS" if run.failed else ""
    print(
        f"  {label:<22} {run.requests_per_second:>8,.0f} req/s  p50 {run.p50_ms:6.1f} ms  "
        f"p99 {run.p99_ms:6.1f} ms  non-2xx {run.non_2xx_3xx}  socket errors "
        f"{sum(run.socket_errors.values())}  (load avg {run.load_average_1m:.1f}){flag}",
        flush=True,
    )


def _benchmark(url: str, args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    src_state = _src_state()
    print(f"code: {src_state}", flush=True)
    wrk = ensure_wrk()
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
    ids_file = RESULTS / "rest_read_ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")

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
    token = tokens[-1]
    wrk_env = {**base_env, "KEEL_BENCH_IDS": str(ids_file), "KEEL_BENCH_TOKEN": token}

    keel_log = RESULTS / "keel-serve.log" if args.keel_log == "file" else None
    baseline_log = RESULTS / "baseline-serve.log"
    for log in (keel_log, baseline_log):
        if log is not None:
            log.write_text("")
    keel_log_label = str(keel_log.relative_to(REPO)) if keel_log else "/dev/null"

    logs = {"keel": keel_log, "baseline": baseline_log}
    runs: dict[str, list[WrkRun]] = {"keel": [], "baseline": []}
    warmups: list[WrkRun] = []
    fields: dict[str, set[str]] = {}
    print(
        f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, "
        f"{args.warmup:g}s warm-up per run, {args.rounds} round(s); keel stdout -> {keel_log_label}",
        flush=True,
    )
    for round_number in range(args.rounds):
        order = ["baseline", "keel"] if round_number % 2 == 0 else ["keel", "baseline"]
        for name in order:
            port = free_port()
            with server(name, serve_cmd(name, port), env, logs[name], port):
                fields[name] = _check_one(name, port, ids[0], token)
                if args.warmup > 0:
                    warmups.append(_wrk(wrk, name, port, wrk_env, args, args.warmup))
                    if warmups[-1].failed:
                        _report_run(warmups[-1], f"{name} warm-up")
                run = _wrk(wrk, name, port, wrk_env, args, args.duration)
            runs[name].append(run)
            _report_run(run, f"round {round_number + 1} {name}")

    if fields.get("keel") != fields.get("baseline"):
        print(
            f"note: response fields differ: keel {sorted(fields.get('keel', ()))} vs baseline "
            f"{sorted(fields.get('baseline', ()))}",
            flush=True,
        )

    profile_summary = _py_spy(args, env, wrk, wrk_env, logs[args.py_spy_server]) if args.py_spy else None

    if args.rounds == 0:
        print("--rounds 0: no measured runs, nothing compared")
        return 0
    medians = {name: _median(r) for name, r in runs.items()}
    ratio = medians["keel"]["requests_per_second"] / medians["baseline"]["requests_per_second"]
    failed = [r for r in [*warmups, *runs["keel"], *runs["baseline"]] if r.failed]
    lines = [
        _line("keel", medians["keel"]),
        _line("baseline", medians["baseline"]),
        f"ratio keel/baseline (throughput): {ratio:.2f}   (target >= {TARGET_RATIO})",
    ]
    if failed:
        lines.insert(0, "!!! INVALID: some runs had non-2xx responses or socket errors (see below) !!!")
    print(
        f"\n== median of {args.rounds} round(s), {args.duration:g}s each, {args.connections} connections, "
        f"{args.profiles:,} profiles; keel stdout -> {keel_log_label}; code {src_state} =="
    )
    print("\n".join(lines), flush=True)
    result: dict[str, Any] = {
        "summary": lines,
        "valid": not failed,
        "ratio_keel_over_baseline_rps": ratio,
        "target_ratio": TARGET_RATIO,
        "median": medians,
        "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
        "config": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "profiles": args.profiles,
            "keel_stdout": keel_log_label,
            "cpus": os.cpu_count(),
            "code": src_state,
            "postgres": "KEEL_BENCH_POSTGRES_URL"
            if os.environ.get("KEEL_BENCH_POSTGRES_URL")
            else "throwaway (devtools.throwaway_postgres)",
        },
        "py_spy": profile_summary,
    }
    out = args.output
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    if failed:
        print("\n" + "!" * 78, file=sys.stderr)
        for r in failed:
            print(
                f"!!! INVALID: {r.server}: {r.non_2xx_3xx} non-2xx/3xx responses, socket errors "
                f"{r.socket_errors}: the figures above are NOT trustworthy",
                file=sys.stderr,
            )
        print("!" * 78, file=sys.stderr)
        return 1
    return 0


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
        default=2,
        help="measured runs per server (median); 0 with --py-spy: only profile",
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
    args = parser.parse_args()

    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
