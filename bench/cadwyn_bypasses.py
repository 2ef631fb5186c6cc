"""What Keel's bypasses of Cadwyn save, now that two API versions exist: CPU time per request,
in process, for the same reads with each bypass switched off in turn.

The bypasses (docs/decisions/0001-framework-internals.md):
- hot reads: `GET /v1/profiles/{id}` answered without FastAPI's routing, in every version (an
  older version's document turned back by the same downgrades as Cadwyn's migrations;
  `keel.api.rest.hot_reads`);
- newest served directly: the newest version's routes handled by their source routes, without
  Cadwyn's identity conversion (`cadwyn_internals.serve_newest_version_directly`);
- async version dependency: no worker thread per request for Cadwyn's `Keel-Version`
  dependency (`cadwyn_internals.use_async_version_dependency`).

Arms, each built in a fresh interpreter (the last bypass patches Cadwyn at import):
- `deployed`: all three, as Keel runs;
- `no-hot-reads`: without the first;
- `no-direct`: without the first two;
- `plain-cadwyn`: without any (the baseline);
and `deployed` again (A/A noise).

Method: each arm's process builds Keel on a throwaway SQLite database (rate limits off, the read
cache on, as deployed), creates 20 profiles and a key, warms up, then sends each request kind N
times straight to the ASGI app (no socket, no HTTP client: the ASGI messages are built once) and
reads its own CPU time (`time.process_time`) around them; the figure is CPU microseconds per
request. The older version's requests (2026-11-28) are measured in every arm: its lists are converted by
Cadwyn in all of them, its reads too once hot reads are off.
Rounds alternate the order of the arms. The process is pinned to CPU 0 when the machine has two.

    python -m bench.cadwyn_bypasses [--rounds 5] [--requests 4000]

Writes docs/performance/<date>-cadwyn-bypasses.md (a new file each run: -2, -3, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from testkit.results import new_result_path

from bench.harness import ROOT, code_state
from bench.read_figures import aa_noise

ARMS = ("deployed", "no-hot-reads", "no-direct", "plain-cadwyn")
BASELINE = "plain-cadwyn"
OLD, NEW = "2026-11-28", "2026-12-07"
KINDS = ("read new", "list new", "read old", "list old")


async def _measure(arm: str, requests: int, warmup: int) -> dict[str, float]:
    import keel.api.application as application

    if arm == "plain-cadwyn":
        # Cadwyn's own dependency stays: the app module's name for the patch does nothing.
        vars(application)["use_async_version_dependency"] = lambda: None
    from keel.api.rest.cadwyn_internals import NewestServedDirectly
    from keel.bootstrap.lifecycle import build_services
    from keel.config import Settings
    from keel.domain.api_keys import Scope
    from keel.service.auth import issue_api_key
    from keel.storage.migrations.runner import migrate

    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/keel.sqlite3"
        await asyncio.to_thread(migrate, url)
        settings = Settings(database_url=url, ratelimit_enabled=False, access_log=False)
        services = await build_services(settings)
        try:
            app = application.build_http_app(settings, services.metrics, hot_reads=arm == "deployed")
            app.state.services = services
            if arm in ("no-direct", "plain-cadwyn") and isinstance(app, NewestServedDirectly):
                app.newest_source = None
            issued = await issue_api_key(
                services.local.store,
                services.local.clock,
                scopes=[Scope.PROFILES_READ, Scope.PROFILES_WRITE],
                api_version=NEW,
                name="bench",
            )
            token = f"Bearer {issued.token}".encode()
            ids = [await _create(app, token, n) for n in range(20)]
            figures = {}
            for kind in KINDS:
                what, version = kind.split()
                path, query = (
                    (f"/v1/profiles/{ids[0]}", b"") if what == "read" else ("/v1/profiles", b"limit=10")
                )
                headers = [
                    (b"authorization", token),
                    (b"keel-version", (OLD if version == "old" else NEW).encode()),
                ]
                scope = _scope("GET", path, query, headers)
                await _send(app, scope, b"", warmup)
                started = time.process_time()
                await _send(app, scope, b"", requests)
                figures[kind] = (time.process_time() - started) / requests * 1e6
            return figures
        finally:
            await services.close()


def _scope(method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"keel"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _send(app: Any, scope: dict[str, Any], body: bytes, times: int) -> bytes:
    """Send the request `times` times; the last answer's body. Any status but 2xx stops the run."""
    answer = bytearray()
    for _ in range(times):
        answer.clear()
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))

        await app(dict(scope, state={}), receive, send)
        if not 200 <= status < 300:
            raise RuntimeError(f"{scope['method']} {scope['path']}: {status} {bytes(answer)[:300]!r}")
    return bytes(answer)


async def _create(app: Any, token: bytes, number: int) -> str:
    body = json.dumps(
        {"handle": f"bench_{number:02d}", "emails": [{"address": f"b{number}@example.com", "primary": True}]}
    ).encode()
    headers = [(b"authorization", token), (b"content-type", b"application/json")]
    answer = await _send(app, _scope("POST", "/v1/profiles", b"", headers), body, 1)
    profile_id: str = json.loads(answer)["id"]
    return profile_id


def _child(arm: str, requests: int, warmup: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.cadwyn_bypasses", "--child", arm, "--requests", str(requests)]
    command += ["--warmup", str(warmup)]
    if (os.cpu_count() or 1) >= 2:
        command = ["taskset", "-c", "0", *command]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{arm} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000, help="measured requests per kind")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured requests per kind first")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only (a smoke run)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child, args.requests, args.warmup))))
        return 0

    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in (*ARMS, "deployed A/A")}
    for round_number in range(args.rounds):
        order = [*ARMS, "deployed A/A"]
        if round_number % 2:
            order.reverse()
        for arm in order:
            runs[arm].append(_child(arm.split()[0], args.requests, args.warmup))
            print(f"round {round_number + 1} {arm}: {runs[arm][-1]}", file=sys.stderr, flush=True)

    def median(arm: str, kind: str) -> float:
        return statistics.median(run[kind] for run in runs[arm])

    def ratio(arm: str, kind: str) -> float:
        # per round: the baseline's CPU per request over the arm's (above 1: the arm costs less)
        return statistics.median(b[kind] / a[kind] for a, b in zip(runs[arm], runs[BASELINE], strict=True))

    lines = [f"{'CPU us/request':<16}" + "".join(f"{kind:>16}" for kind in KINDS)]
    for arm in ARMS:
        lines.append(f"{arm:<16}" + "".join(f"{median(arm, kind):>16.1f}" for kind in KINDS))
    lines.append("")
    lines.append(f"ratio: {BASELINE} CPU ÷ arm CPU (above 1: the arm saves), median over rounds")
    for arm in ARMS[:-1]:
        lines.append(f"{arm:<16}" + "".join(f"{ratio(arm, kind):>15.2f}x" for kind in KINDS))
    noise = [aa_noise([r[k] for r in runs["deployed"]], [r[k] for r in runs["deployed A/A"]]) for k in KINDS]
    lines.append("")
    lines.append(
        "A/A noise (deployed vs itself, same round): "
        + ", ".join(
            f"{kind} median ±{n.median_deviation:.1%} worst ±{n.worst_deviation:.1%}"
            for kind, n in zip(KINDS, noise, strict=True)
        )
    )
    report = "\n".join(lines)
    print(report)
    if args.no_write:
        return 0
    day = dt.date.today().isoformat()
    path = new_result_path("cadwyn-bypasses")
    rows = "\n".join(
        f"| {round_number + 1} | {arm} | " + " | ".join(f"{run[kind]:.1f}" for kind in KINDS) + " |"
        for arm in (*ARMS, "deployed A/A")
        for round_number, run in enumerate(runs[arm])
    )
    path.write_text(
        f"# What the Cadwyn bypasses save, with two API versions ({day})\n\n"
        f"Command: `python -m bench.cadwyn_bypasses --rounds {args.rounds} --requests {args.requests} "
        f"--warmup {args.warmup}` (code {code_state()}).\n\n"
        + (__doc__ or "").split("\n\n", 1)[1].split("\n    python -m")[0].strip()
        + "\n\n```\n"
        + report
        + "\n```\n\n| round | arm | "
        + " | ".join(KINDS)
        + " |\n|---|---|"
        + "---|" * len(KINDS)
        + "\n"
        + rows
        + "\n"
    )
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
