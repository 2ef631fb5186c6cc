"""GraphQL vs REST for the same data: 100 profiles with their emails and links, as the GraphQL
connection `profiles(first: 100)` and as the REST list `GET /v1/profiles?limit=100`, served by
one Keel process over PostgreSQL, measured by wrk in the same run, alternating.

    python bench/graphql_vs_rest.py [--duration 8] [--rounds 2] [--connections 8]

Starts a throwaway PostgreSQL (or uses KEEL_BENCH_POSTGRES_URL), migrates and seeds it (each
bench profile has an email and a link), creates a profiles:read key on a plan large enough never
to refuse, checks that both answers carry the same profiles, emails and links, counts the
database calls per request from Keel's own metrics, then runs REST and GraphQL alternately
`--rounds` times and reports the median throughput of each and their ratio (target ≥ 0.5).
Exits 1 if any measured run saw socket errors, a non-2xx answer, or a 200 carrying GraphQL
`errors` (every answer is checked by bench/wrk_answers.py's wrk callback). Bounded to about a minute with the
defaults. Results: stdout and bench/results/graphql_vs_rest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.ports import free_port  # noqa: E402
from testkit.processes import keel_cmd, server  # noqa: E402
from testkit.seed import seed_profiles  # noqa: E402

from bench.harness import WrkRun, ensure_wrk, parse_wrk, run_on_postgres, run_wrk, serve_cmd  # noqa: E402
from bench.wrk_answers import (  # noqa: E402
    ANSWER_CHECK_LUA,
    AnswerCounts,
    answer_failures,
    parse_answers,
)

RESULTS = REPO / "bench" / "results"
TARGET_RATIO = 0.5
PAGE = 100
_HUGE = {"policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}], "concurrency": 100_000}
BENCH_PLANS = {"standard": _HUGE, "anonymous": _HUGE, "bench": _HUGE}
# Every field the REST document has, so that both answers carry the same data.
QUERY = f"""query Page {{
  profiles(first: {PAGE}) {{
    edges {{ node {{
      id handle emails {{ address verified primary }} displayName bio avatarUrl locale timezone
      links {{ kind url }} attributes version createdAt updatedAt
    }} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}"""
REST_PATH = f"/v1/profiles?limit={PAGE}"
_DB_CALLS = re.compile(r"^keel_db_query_duration_seconds_count\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def _lua_post(body: str) -> str:
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def _wrk(
    wrk: str, name: str, url: str, token: str, args: argparse.Namespace, duration: float, script: Path
) -> tuple[WrkRun, AnswerCounts]:
    """One wrk run; `script` must include ANSWER_CHECK_LUA, whose counts come back with it."""
    done = run_wrk(
        wrk,
        url,
        script,
        threads=args.threads,
        connections=args.connections,
        duration=duration,
        headers={"Authorization": f"Bearer {token}"},
    )
    return parse_wrk(name, done.stdout), parse_answers(done.stdout)


def _request(base: str, token: str, path: str, body: str | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback http only
        base + path,
        data=body.encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def _graphql(base: str, token: str) -> list[dict[str, Any]]:
    answer = _request(base, token, "/graphql", json.dumps({"query": QUERY}))
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL answered errors: {answer['errors']}")
    return [edge["node"] for edge in answer["data"]["profiles"]["edges"]]


def _same_data(base: str, token: str) -> None:
    """Both answers must carry the same profiles, emails and links, or the comparison is void."""
    rest = _request(base, token, REST_PATH)["items"]
    graphql = _graphql(base, token)
    if len(rest) != PAGE or len(graphql) != PAGE:
        raise RuntimeError(f"expected {PAGE} profiles, got REST {len(rest)}, GraphQL {len(graphql)}")
    for r, g in zip(rest, graphql, strict=True):
        same = (
            r["id"] == g["id"]
            and r["emails"] == g["emails"]
            and r["links"] == g["links"]
            and r["handle"] == g["handle"]
            and r["attributes"] == g["attributes"]
            and r["updated_at"] == g["updatedAt"]
        )
        if not same or not r["emails"] or not r["links"]:
            raise RuntimeError(f"REST and GraphQL disagree (or lack emails/links): {r} vs {g}")


def _db_calls(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return sum(float(value) for value in _DB_CALLS.findall(text))


def _calls_per_request(base: str, token: str, send: Any, requests: int = 20) -> float:
    before = _db_calls(base)
    for _ in range(requests):
        send()
    return (_db_calls(base) - before) / requests


def _benchmark(url: str, args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    wrk = ensure_wrk()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    # As bench/rest_read.py: rate limits decided on every request under a plan that never
    # refuses (both protocols pay for admission), load shedding off (wrk ignores Retry-After).
    env = {
        **base_env,
        "KEEL_DATABASE_URL": url,
        "KEEL_RATELIMIT_PLANS": json.dumps(BENCH_PLANS),
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
        "KEEL_ACCESS_LOG": "false",
    }
    migrated = subprocess.run(
        keel_cmd("migrate"), env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"keel migrate failed:\n{migrated.stdout}\n{migrated.stderr}")
    asyncio.run(asyncio.wait_for(seed_profiles(url, args.profiles, "eu1"), 300))
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
    if created.returncode != 0:
        raise RuntimeError(f"keel keys create failed:\n{created.stdout}\n{created.stderr}")
    token = created.stdout.strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runs: dict[str, list[WrkRun]] = {"rest": [], "graphql": []}
    bad_answers: list[str] = []
    with tempfile.TemporaryDirectory() as scratch, server("keel", serve_cmd("keel", port), env, None, port):
        script = Path(scratch) / "graphql.lua"
        script.write_text(_lua_post(json.dumps({"query": QUERY, "operationName": "Page"})) + ANSWER_CHECK_LUA)
        rest_script = Path(scratch) / "rest.lua"
        rest_script.write_text(ANSWER_CHECK_LUA)
        _same_data(base, token)
        calls = {
            "rest": _calls_per_request(base, token, lambda: _request(base, token, REST_PATH)),
            "graphql": _calls_per_request(base, token, lambda: _graphql(base, token)),
        }
        targets = {"rest": (base + REST_PATH, rest_script), "graphql": (base + "/graphql", script)}
        for name, (target, lua) in targets.items():
            _wrk(wrk, name, target, token, args, args.warmup, lua)
        for _ in range(args.rounds):
            for name, (target, lua) in targets.items():
                run, answers = _wrk(wrk, name, target, token, args, args.duration, lua)
                runs[name].append(run)
                bad_answers += answer_failures(name, answers)
                print(
                    f"  {name:8} {run.requests_per_second:8.1f} req/s"
                    f"  p50 {run.p50_ms:.2f} ms  p99 {run.p99_ms:.2f} ms",
                    flush=True,
                )
    medians = {name: statistics.median(r.requests_per_second for r in rs) for name, rs in runs.items()}
    ratio = medians["graphql"] / medians["rest"]
    print(
        f"\n== {PAGE} profiles with emails and links per request; median of {args.rounds} round(s) of"
        f" {args.duration:g}s, {args.connections} connections, same Keel process"
    )
    print(f"REST    GET {REST_PATH}: {medians['rest']:.1f} req/s, {calls['rest']:.2f} database calls/request")
    print(
        f"GraphQL profiles(first: {PAGE}):   {medians['graphql']:.1f} req/s,"
        f" {calls['graphql']:.2f} database calls/request"
    )
    print(f"ratio GraphQL/REST: {ratio:.2f} (target >= {TARGET_RATIO})")
    result = {
        "page": PAGE,
        "rounds": args.rounds,
        "duration_seconds": args.duration,
        "connections": args.connections,
        "requests_per_second": medians,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "database_calls_per_request": calls,
        "runs": {name: [r.__dict__ for r in rs] for name, rs in runs.items()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / "graphql_vs_rest.json").write_text(json.dumps(result, indent=2) + "\n")
    failed = [r for rs in runs.values() for r in rs if r.failed]
    for r in failed:
        print(
            f"!!! INVALID: {r.server}: {r.non_2xx_3xx} non-2xx/3xx, socket errors {r.socket_errors}",
            file=sys.stderr,
        )
    for failure in bad_answers:
        print(f"!!! INVALID: {failure}: the figures above are not those of reads", file=sys.stderr)
    if failed or bad_answers:
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load per protocol")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--profiles", type=int, default=1_000, help="bench profiles to seed")
    args = parser.parse_args()
    return run_on_postgres(lambda url: _benchmark(url, args))


if __name__ == "__main__":
    sys.exit(main())
