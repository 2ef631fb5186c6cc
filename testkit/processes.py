"""The process harness: every server the kit starts runs in a session of its own and is stopped
when the block that started it ends, on errors, on Ctrl-C (SIGINT) and on SIGTERM too.

Three layers, each a backstop for the one before:

1. `server(...)` and the throwaway servers are context managers: leaving the block stops them.
2. `interrupt_on_signals()` turns SIGTERM (and SIGINT) into KeyboardInterrupt in the main thread,
   so a signal unwinds through those blocks instead of killing the interpreter where it stands.
   Entry points (the bench scripts, `python -m chaos`, the servers' own `main`, the test
   session's conftest) call it once.
3. Every process started through `start_session` is remembered until it has exited; at interpreter
   exit any still running is killed with its whole process group (`reap_all`). This catches a
   reference lost by a bug, as a replaced Redis once was, and a block that a second signal cut
   short.

A server in a session of its own does not receive the terminal's Ctrl-C: only we do, and we stop
it, in the order the blocks unwind (Keel before the database it talks to).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from testkit.health import wait_healthy
from testkit.ports import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STOP_TIMEOUT = 15.0

_started: dict[int, subprocess.Popen[bytes]] = {}
_started_lock = threading.Lock()


def start_session(command: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(command, **popen)` in a new session (so its process group id is its pid),
    remembered until it has exited so that `reap_all` can stop it if nothing else does."""
    process: subprocess.Popen[bytes] = subprocess.Popen(command, start_new_session=True, **popen)
    with _started_lock:
        for pid in [pid for pid, known in _started.items() if known.poll() is not None]:
            del _started[pid]
        _started[process.pid] = process
    return process


def running() -> list[subprocess.Popen[bytes]]:
    """The processes started through `start_session` that have not exited."""
    with _started_lock:
        return [process for process in _started.values() if process.poll() is None]


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process started in its own session: `sig` to its process group, then SIGKILL to the
    group if it has not exited within `timeout` seconds. A no-op once it has exited."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


@atexit.register
def reap_all() -> None:
    """Kill (SIGKILL, whole process group) every process started through `start_session` that is
    still running. Runs at interpreter exit, which a signal reaches through
    `interrupt_on_signals`; never on SIGKILL of this process, which nothing can catch."""
    for process in running():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT)


def interrupt_on_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Make each of `signals` raise KeyboardInterrupt in the main thread, so that `with` blocks
    and `finally` clauses stop what they started. A second signal while that cleanup runs is
    ignored: it must not cut the cleanup short. Also for SIGINT, which a script started with `&`
    inherits as ignored."""

    def on_signal(signum: int, frame: object) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt

    for each in signals:
        signal.signal(each, on_signal)


@contextlib.contextmanager
def server(
    name: str,
    command: list[str],
    env: dict[str, str],
    log: Path | None,
    port: int,
    sig: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server that answers /healthz on `port`, wait until it does, and stop it (`sig`,
    then SIGKILL) when the block ends, however it ends. Output goes to `log` (appended)."""
    with (log if log is not None else Path(os.devnull)).open("ab") as out:
        process = start_session(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log, name=name)
        yield process
    finally:
        stop(process, sig)


def keel_cmd(*args: str) -> list[str]:
    """The `keel` command of this interpreter's environment, with `args`."""
    script = BIN / "keel"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from keel.cli import main; main()", *args]


def keel_run(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `keel *args` with `env` to completion, whatever its exit status (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def keel_output(env: dict[str, str], *args: str, timeout: float = 60.0) -> str:
    """Run `keel *args` with `env` to completion; its stdout. RuntimeError with its stderr when
    it fails (a migration, a key created for a test or a benchmark)."""
    done = keel_run(env, *args, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"keel {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def keel_nodes(count: int, env: dict[str, str], logs: Path) -> Iterator[list[str]]:
    """`count` processes of `keel serve` with `env`, each on a free loopback port and logging to
    `logs/keel-<n>.log`, until the block ends; their base URLs."""
    with contextlib.ExitStack() as stack:
        urls = []
        for n in range(count):
            port = free_port()
            command = keel_cmd("serve")
            stack.enter_context(
                server(f"keel {n}", command, {**env, "KEEL_PORT": str(port)}, logs / f"keel-{n}.log", port)
            )
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
