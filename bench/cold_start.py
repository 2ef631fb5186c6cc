"""Cold start: from starting the process to its first served `/v1` read, `keel serve` against a
bare FastAPI app on the same machine and the same SQLite database (bench/cold_start_app.py).

    python -m bench.cold_start [--rounds 7] [--phases] [--floor]

A throwaway directory holds a migrated SQLite database (Keel's embedded default) with one
profile and one API key. Each round starts, one at a time: the bare app, Keel, the bare app
again (its A/A pair: the noise), in an order that alternates between rounds. Each start is timed
from just before the process is spawned to the first 200 answer of
`GET /v1/profiles/<id>` (polled every 2 ms on a new connection), then the process is stopped.
Both are served by uvicorn with the same options (uvloop, httptools, no access log); Keel's own
logs go to /dev/null. Reported: each figure's median over rounds, Keel ÷ bare, and the A/A
ratio's spread. The target (issue 19) is Keel ≤ 1.5× the bare app. Writes a dated report under
docs/performance/.

`--floor`: what importing the libraries alone costs, each set in a new interpreter per round
(timed from spawn to exit), against the bare app's whole start measured in the same rounds:
the bare app's own imports; the libraries Keel's default configuration cannot serve without
(REST versioning, GraphQL, logs, settings, metrics); and every third-party package `keel serve`
has imported once started (listed by bench/cold_start_phases.py). No Keel code runs in these.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.ports import free_port
from testkit.processes import keel_cmd, start_session, stop
from testkit.results import new_result_path

from bench.harness import code_state, serve_cmd

POLL_S = 0.002
TIMEOUT_S = 60.0


def _first_read(port: int, path: str, token: str | None, process: subprocess.Popen[bytes]) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before its first read")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", path, headers=headers)
            status = connection.getresponse().status
            if status == 200:
                return
            raise RuntimeError(f"the first read answered {status}")
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            time.sleep(POLL_S)
        finally:
            connection.close()
    raise RuntimeError(f"no first read within {TIMEOUT_S:g} s")


def _start_to_first_read(
    command: list[str], env: dict[str, str], port: int, path: str, token: str | None
) -> float:
    started = time.perf_counter()
    process = start_session(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _first_read(port, path, token, process)
        return time.perf_counter() - started
    finally:
        stop(process)


def _prepare(directory: Path) -> tuple[dict[str, str], str, str]:
    """A migrated SQLite database with one profile and a key: the environment, the token and the
    profile's id."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATABASE_URL": f"sqlite:///{directory / 'keel.sqlite3'}",
        "KEEL_ACCESS_LOG": "false",
        "KEEL_COLD_START_DB": str(directory / "keel.sqlite3"),
    }

    def keel(*args: str) -> str:
        done = subprocess.run(
            keel_cmd(*args), env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return done.stdout.strip()

    keel("migrate")
    token = keel("keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").splitlines()[-1]
    port = free_port()
    process = start_session(
        serve_cmd("keel", port),
        env={**env, "KEEL_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _first_read(port, "/healthz", None, process)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = b'{"handle":"cold_start","emails":[{"address":"cold@example.com","primary":true}]}'
        connection.request(
            "POST",
            "/v1/profiles",
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        created = response.read().decode()
        if response.status != 201:
            raise RuntimeError(f"could not create the profile: {response.status} {created}")
    finally:
        stop(process)
    profile_id = created.split('"id":', 1)[1].split('"')[1]
    return env, token, profile_id


# The bare app's imports, and what Keel's default configuration cannot serve without.
BARE_IMPORTS = ("fastapi", "uvicorn", "uvloop", "httptools", "aiosqlite")
KEEL_CORE_IMPORTS = (
    *BARE_IMPORTS,
    "cadwyn",
    "strawberry",
    "structlog",
    "pydantic_settings",
    "prometheus_client",
)


def _keel_imports(env: dict[str, str], token: str, path: str) -> tuple[str, ...]:
    """Every third-party package `keel serve` has imported once started, and its server's."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cold_start_phases"],
        env={
            **env,
            "KEEL_COLD_START_TOKEN": token,
            "KEEL_COLD_START_PATH": path,
            "KEEL_LOG_LEVEL": "warning",
            "KEEL_COLD_START_MODULES": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = next(line for line in done.stdout.splitlines() if line.startswith("modules\t"))
    names = set(listed.partition("\t")[2].split(",")) - {"bench"}
    return tuple(sorted(names | {"uvicorn", "uvloop", "httptools"}))


def _import_seconds(modules: tuple[str, ...], env: dict[str, str]) -> float:
    """Spawn to exit of a new interpreter that imports `modules` (none: the interpreter alone)."""
    code = f"import {', '.join(modules)}" if modules else "pass"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    return time.perf_counter() - started


def _phases(env: dict[str, str], token: str, path: str, rounds: int) -> dict[str, list[float]]:
    """Each phase's milliseconds over `rounds` runs of bench/cold_start_phases.py."""
    phases: dict[str, list[float]] = {}
    for _ in range(rounds):
        done = subprocess.run(
            [sys.executable, "-m", "bench.cold_start_phases"],
            env={
                **env,
                "KEEL_COLD_START_TOKEN": token,
                "KEEL_COLD_START_PATH": path,
                "KEEL_LOG_LEVEL": "warning",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        for line in done.stdout.splitlines():
            name, _, milliseconds = line.partition("\t")
            if milliseconds and name != "modules":
                phases.setdefault(name, []).append(float(milliseconds))
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time Keel's start-up phase by phase (bench/cold_start_phases.py)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time importing the libraries alone, against the bare app's whole start",
    )
    args = parser.parse_args()
    code = code_state()
    with tempfile.TemporaryDirectory(prefix="keel-cold-start-") as tmp:
        env, token, profile_id = _prepare(Path(tmp))
        path = f"/v1/profiles/{profile_id}"
        figures: dict[str, list[float]] = {"bare": [], "keel": [], "bare A/A": []}
        floors: dict[str, tuple[str, ...]] = {}
        if args.floor:
            floors = {
                "the interpreter alone": (),
                "the bare app's imports": BARE_IMPORTS,
                "Keel's core libraries": KEEL_CORE_IMPORTS,
                "every library `keel serve` imports": _keel_imports(env, token, path),
            }
            figures.update({name: [] for name in floors})
        for number in range(args.rounds):
            order = ["bare", "keel", "bare A/A"] if number % 2 == 0 else ["bare A/A", "keel", "bare"]
            order += list(floors)
            for name in order:
                if name in floors:
                    figures[name].append(_import_seconds(floors[name], env))
                    print(f"round {number + 1} import {name}: {figures[name][-1] * 1000:.0f} ms", flush=True)
                    continue
                port = free_port()
                command = serve_cmd("keel" if name == "keel" else "cold_start", port)
                seconds = _start_to_first_read(
                    command, {**env, "KEEL_PORT": str(port)}, port, path, token if name == "keel" else None
                )
                figures[name].append(seconds)
                print(f"round {number + 1} {name:<9} {seconds * 1000:7.0f} ms", flush=True)
        phases = _phases(env, token, path, args.rounds) if args.phases else {}
    median = {name: statistics.median(values) for name, values in figures.items()}
    flags = "".join(f" --{flag}" for flag in ("phases", "floor") if getattr(args, flag))
    ratios = [k / b for k, b in zip(figures["keel"], figures["bare"], strict=True)]
    noise = [a / b for a, b in zip(figures["bare A/A"], figures["bare"], strict=True)]
    lines = [
        f"# Cold start: process start to the first served /v1 read ({time.strftime('%Y-%m-%d')})",
        "",
        f"Written by `python -m bench.cold_start --rounds {args.rounds}{flags}`. Code: {code}. SQLite (Keel's"
        " embedded default), one profile; both servers by uvicorn (uvloop, httptools, no access log);"
        " timed from just before the spawn to the first 200 of `GET /v1/profiles/<id>`, polled every"
        f" {POLL_S * 1000:g} ms. This 2-core machine, nothing else pinned or stopped.",
        "",
        "| server | median | min | max |",
        "|---|---|---|---|",
    ]
    for name in ("bare", "keel", "bare A/A"):
        values = figures[name]
        cells = [f"{seconds * 1000:.0f} ms" for seconds in (median[name], min(values), max(values))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- **Keel ÷ bare: {statistics.median(ratios):.2f}×** (median of the rounds' ratios;"
        f" {min(ratios):.2f}–{max(ratios):.2f}). Target: ≤ 1.5×.",
        f"- A/A (bare ÷ bare): {statistics.median(noise):.2f}× ({min(noise):.2f}–{max(noise):.2f}): the"
        " noise of one figure.",
        "",
    ]
    if floors:
        lines += [
            "The floor (`--floor`): importing libraries alone, in a new interpreter each (spawn to exit),"
            " no Keel code, against the bare app's whole start (spawn to first read) in the same rounds:",
            "",
            "| imported | median | ÷ the bare app's whole start (median of rounds) |",
            "|---|---|---|",
        ]
        for name, modules in floors.items():
            share = [f / b for f, b in zip(figures[name], figures["bare"], strict=True)]
            lines.append(
                f"| {name} ({len(modules)} packages) | {median[name] * 1000:.0f} ms |"
                f" {statistics.median(share):.2f}× |"
            )
        same_way = [
            k / b
            for k, b in zip(figures["Keel's core libraries"], figures["the bare app's imports"], strict=True)
        ]
        lines += [
            "",
            f"- **Keel's core libraries ÷ the bare app's imports, both timed the same way (spawn to"
            f" exit, which includes the interpreter's teardown): {statistics.median(same_way):.2f}×**"
            f" ({min(same_way):.2f}–{max(same_way):.2f}).",
            "",
            "Keel's core libraries: " + ", ".join(f"`{m}`" for m in KEEL_CORE_IMPORTS) + ".",
            "Every library `keel serve` imports: "
            + ", ".join(f"`{m}`" for m in floors["every library `keel serve` imports"])
            + ".",
            "",
        ]
    if phases:
        lines += [
            "Keel's start-up phase by phase (`--phases`: bench/cold_start_phases.py in a new interpreter"
            f" per round, {args.rounds} rounds; in process, without the socket or uvicorn's own start):",
            "",
            "| phase | median | min | max |",
            "|---|---|---|---|",
        ]
        for phase, values in phases.items():
            cells = [f"{ms:.0f} ms" for ms in (statistics.median(values), min(values), max(values))]
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        lines.append("")
    report = new_result_path("cold-start")
    report.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
