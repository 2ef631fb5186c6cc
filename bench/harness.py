"""What the benchmarks share: starting and stopping servers (Keel, the baseline, throwaway
PostgreSQL and Redis), waiting for health, running `keel` commands, seeding bench profiles."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from keel.domain.ids import new_ulid

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
SAMPLED_IDS = 10_000


# --------------------------------------------------------------------------- processes


def run_on_postgres(benchmark: Callable[[str], int]) -> int:
    """`benchmark(database_url)` on a throwaway PostgreSQL (or KEEL_BENCH_POSTGRES_URL). Ctrl-C
    or SIGTERM unwind through every cleanup (servers, PostgreSQL); a second one cannot cut it."""
    from devtools.throwaway_postgres import postgres_server

    def on_signal(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with postgres_server(env_var="KEEL_BENCH_POSTGRES_URL") as url:
            return benchmark(url)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child started in its own session: signal its process group, then SIGKILL it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def server(
    name: str, cmd: list[str], env: dict[str, str], log: Path | None, port: int, sig: int = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server (own session, so a terminal Ctrl-C reaches only us), wait for /healthz."""
    with (log if log is not None else Path(os.devnull)).open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
    try:
        wait_healthy(name, proc, f"http://127.0.0.1:{port}/healthz", log)
        yield proc
    finally:
        stop(proc, sig)


def wait_healthy(name: str, proc: subprocess.Popen[bytes], url: str, log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else "(log: /dev/null)"
            raise RuntimeError(f"{name} exited with {proc.returncode} before /healthz; log tail:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer {url} within {START_TIMEOUT:.0f}s")


def keel_cmd(*args: str) -> list[str]:
    script = BIN / "keel"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from keel.cli import main; main()", *args]


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


# --------------------------------------------------------------------------- database


SEED_SQL = [
    # $1: ids, $2: offset for the handle/email number (so a re-run on a kept database adds, not clashes)
    """INSERT INTO profiles (id, handle, display_name, bio, avatar_url, locale, timezone, attributes,
                             version, created_at, updated_at, deleted_at)
       SELECT t.id, 'bench_' || (t.n + $2), 'Bench ' || (t.n + $2), NULL, NULL, 'en-GB', 'Europe/London',
              '{"plan":"free"}'::jsonb, 1, now(), now(), NULL
         FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)""",
    """INSERT INTO profile_emails (profile_id, position, address, address_normalized, verified,
                                   is_primary, live)
       SELECT t.id, 0, 'bench.' || (t.n + $2) || '@example.com', 'bench.' || (t.n + $2) || '@example.com',
              true, true, true
         FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)""",
    """INSERT INTO profile_links (profile_id, position, kind, url)
       SELECT t.id, 0, 'website', 'https://example.com/bench/' || (t.n + $2)
         FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)""",
]
BENCH_ROWS = "FROM profiles WHERE handle LIKE 'bench\\_%' AND deleted_at IS NULL"


async def seed_profiles(url: str, count: int, region: str) -> tuple[int, list[str]]:
    """Make sure `count` bench profiles exist; return (how many were inserted, sampled ids)."""
    conn = await asyncpg.connect(url, timeout=30, command_timeout=600)
    try:
        existing = await conn.fetchval(f"SELECT count(*) {BENCH_ROWS}")
        missing = max(0, count - existing)
        if missing:
            ids = [f"{region}_{new_ulid()}" for _ in range(missing)]
            async with conn.transaction():
                for sql in SEED_SQL:
                    await conn.execute(sql, ids, existing)
            await conn.execute("ANALYZE profiles, profile_emails, profile_links")
        sample = await conn.fetch(f"SELECT id {BENCH_ROWS} ORDER BY random() LIMIT $1", SAMPLED_IDS)
        return missing, [r["id"] for r in sample]
    finally:
        await conn.close()


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
