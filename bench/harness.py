"""What only the benchmarks share: running one on a throwaway PostgreSQL, the command that serves
Keel or a bench app, and wrk (finding it, parsing its report). Servers, ports, health checks and
seeding come from the test kit (testkit/)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testkit.processes import interrupt_on_signals, keel_cmd
from testkit.servers.postgres import postgres_server

ROOT = Path(__file__).resolve().parents[1]


def run_on_postgres(benchmark: Callable[[str], int]) -> int:
    """`benchmark(database_url)` on a throwaway PostgreSQL (or KEEL_BENCH_POSTGRES_URL). Ctrl-C
    or SIGTERM unwind through every cleanup (servers, PostgreSQL); a second one cannot cut it."""
    interrupt_on_signals()
    try:
        with postgres_server(env_var="KEEL_BENCH_POSTGRES_URL") as url:
            return benchmark(url)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130


def code_state() -> str:
    """Which code was measured: HEAD plus a hash of uncommitted changes under src/ and bench/."""

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, timeout=30, check=False)
        return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "src", "bench")
    changed = git("status", "--porcelain", "--", "src", "bench").splitlines()
    if not diff and not changed:
        return f"{head} (src and bench clean)"
    digest = hashlib.sha256(diff.encode()).hexdigest()[:10]
    return f"{head} + uncommitted changes ({len(changed)} files under src/ bench/, diff sha256 {digest})"


def serve_cmd(name: str, port: int) -> list[str]:
    """One uvicorn worker on loopback, uvloop + httptools: Keel, or a bench app (`baseline`,
    `refusal_floor`)."""
    if name == "keel":
        return keel_cmd("serve", "--host", "127.0.0.1", "--port", str(port))
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"bench.{name}_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-proxy-headers",
    ]


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkRun:
    server: str
    requests_per_second: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    load_average_1m: float = field(default_factory=lambda: os.getloadavg()[0])  # at the end of the run

    @property
    def failed(self) -> bool:
        return self.non_2xx_3xx > 0 or any(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(server: str, text: str) -> WrkRun:
    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"cannot find {pattern!r} in wrk output:\n{text}")
        return match

    latency = {
        int(m.group(1)): float(m.group(2)) * _UNITS_MS[m.group(3)]
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    }
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkRun(
        server=server,
        requests_per_second=float(need(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=latency.get(50, float("nan")),
        p75_ms=latency.get(75, float("nan")),
        p90_ms=latency.get(90, float("nan")),
        p99_ms=latency.get(99, float("nan")),
        requests=int(need(r"^\s+(\d+) requests in").group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
        )
        if errors
        else {},
    )


def run_wrk(
    wrk: str,
    url: str,
    lua: Path,
    *,
    threads: int,
    connections: int,
    duration: float,
    env: dict[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """One wrk run with the benchmarks' options (a 5 s timeout per request, the latency
    distribution, the Lua script `lua`, `headers` on every request), `prefix` before it (a
    `taskset`), to completion (`env`: this process's when None); RuntimeError with its output
    when it fails."""
    cmd = [
        *prefix,
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        *(item for name, value in (headers or {}).items() for item in ("-H", f"{name}: {value}")),
        "-s",
        str(lua),
        url,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get install -y wrk", flush=True)
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, check=False)
        subprocess.run(install, capture_output=True, timeout=600, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still not on PATH after apt-get install")
    return found


def sqlite_node_env(folder: Path) -> dict[str, str]:
    """This process's environment without KEEL_*, plus one Keel worker on SQLite in `folder`
    with the profile cache and rate limits off and no access log: one node's own cost."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    return env | {
        "KEEL_DATABASE_URL": f"sqlite:///{folder / 'keel.sqlite3'}",
        "KEEL_WORKERS": "1",
        "KEEL_ACCESS_LOG": "false",
        "KEEL_LOG_LEVEL": "warning",
        "KEEL_CACHE_ENABLED": "false",
        "KEEL_RATELIMIT_ENABLED": "false",
    }


_UNLIMITED = {
    "policies": [{"name": "burst", "quota": 10_000_000, "window_seconds": 1}],
    "concurrency": 100_000,
}


def deployed_env(database_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """This process's environment without KEEL_*, plus Keel's deployed defaults on `database_url`
    and `redis_url`, except rate-limit plans too large to refuse anything; `settings` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    plans = json.dumps({"standard": _UNLIMITED, "anonymous": _UNLIMITED, "bench": _UNLIMITED})
    return (
        env
        | {"KEEL_DATABASE_URL": database_url, "KEEL_REDIS_URL": redis_url, "KEEL_RATELIMIT_PLANS": plans}
        | settings
    )


def bench_key(env: dict[str, str], scopes: str = "profiles:read,profiles:write") -> str:
    """A new API key on the unlimited `bench` plan (`deployed_env`), through `keel keys create`."""
    created = subprocess.run(
        keel_cmd("keys", "create", "--scopes", scopes, "--plan", "bench", "--quiet"),
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if created.returncode != 0:
        raise RuntimeError(f"keel keys create failed ({created.returncode}):\n{created.stderr}")
    return created.stdout.strip().splitlines()[-1]


def pin(pid: int, cpu: int) -> None:
    """Process `pid` on CPU `cpu` alone, where this machine has more than one."""
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, {cpu})


def wrk_prefix() -> list[str]:
    """What runs wrk on CPU 1 (`taskset`), where this machine has more than one; else nothing."""
    return ["taskset", "-c", "1"] if len(os.sched_getaffinity(0)) > 1 else []
