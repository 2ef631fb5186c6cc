"""No server outlives what started it: a throwaway server's own command, a harness that runs
servers, a chaos run and the test session itself are each started for real, sent Ctrl-C (SIGINT) or SIGTERM
once their servers run, and every server process they started must then be gone.

Each starter runs in a subprocess of its own and says READY on stdout once its servers answer;
the servers it started are its descendants at that moment."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from testkit import process_faults

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 90.0  # a failure bound only: a throwaway PostgreSQL starts in a few seconds
EXIT_TIMEOUT = 60.0
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def _start(command: list[str], cwd: Path = REPO) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("KEEL_TEST_POSTGRES_URL", "KEEL_TEST_REDIS_URL"):  # start servers, never borrow one
        env.pop(name, None)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _read_until(process: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """The output of `process` up to and including `marker`; fails if it exits first."""
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + READY_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while marker not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} yet:\n{seen.decode()}"
            assert selector.select(remaining), f"no {marker!r} yet:\n{seen.decode()}"
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, f"exited ({process.wait()}) before {marker!r}:\n{seen.decode()}"
            seen += chunk
    return seen


def _drain(process: subprocess.Popen[bytes]) -> bytes:
    """What `process` wrote and nobody read yet, without waiting: a server left running may hold
    the pipe open, and that must fail the test, not hang it."""
    assert process.stdout is not None
    with process.stdout:
        os.set_blocking(process.stdout.fileno(), False)
        try:
            return process.stdout.read() or b""
        except BlockingIOError:
            return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _interrupt_and_check(
    process: subprocess.Popen[bytes], signum: int, servers: int, ready: bytes = b"READY"
) -> str:
    """Send `signum` to `process` once it says `ready`, wait for it to exit, and fail if any of the
    (at least `servers`) processes it had started is still running. Returns its output."""
    try:
        output = _read_until(process, ready)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    started = process_faults.descendants(process.pid)
    assert len(started) >= servers, f"expected {servers} server processes, found {started}"
    process.send_signal(signum)
    stuck = ""
    try:
        process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        # Where it hangs, for the failure below (it failed once in CI, not since).
        stuck = _stacks(process.pid) + _processes([process.pid, *process_faults.descendants(process.pid)])
        started += [pid for pid in process_faults.descendants(process.pid) if pid not in started]
    finally:
        if process.poll() is None:
            process.kill()
    output += _drain(process)
    left = [pid for pid in started if _alive(pid)]
    for pid in left:  # leave nothing behind for the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert not stuck, (
        f"no exit within {EXIT_TIMEOUT:g} s of {signal.Signals(signum).name}:\n{stuck}\n{output.decode()}"
    )
    assert not left, f"still running after {signal.Signals(signum).name}: {left}\n{output.decode()}"
    return output.decode()


def _stacks(pid: int) -> str:
    """The Python stacks of a process that did not exit (py-spy, a dev dependency)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    try:
        done = subprocess.run(
            [str(py_spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"(no stacks: {error})\n"
    return done.stdout + done.stderr


def _processes(pids: list[int]) -> str:
    """Each process's command line and state, from /proc."""
    lines = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        lines.append(f"{pid} [{state}] {command}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("signame", SIGNALS)
@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_a_throwaway_servers_command_stops_its_server(name: str, signame: str) -> None:
    process = _start([sys.executable, "-c", _ready_after_url(f"testkit.servers.{name}")])
    _interrupt_and_check(process, SIGNALS[signame], servers=1)
    assert process.returncode == 0


def _ready_after_url(module: str) -> str:
    # The server's own `main`, with READY printed after the URL it prints when it serves.
    return textwrap.dedent(f"""
        import builtins, sys
        printed = builtins.print
        def print(*args, **kwargs):
            printed(*args, **kwargs)
            printed("READY", flush=True)
        builtins.print = print
        from {module} import main
        main()
    """)


HARNESS = """
import signal, sys
from pathlib import Path
from testkit.ports import free_port
from testkit.processes import interrupt_on_signals, server, start_session
from testkit.servers.redis import redis_server

interrupt_on_signals()
directory = Path(sys.argv[1])
(directory / "healthz").write_text("ok")
port = free_port()
web = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), str(port)]
with redis_server(), server("web", web, {}, None, port):
    if sys.argv[2] == "reference lost":
        start_session([sys.executable, "-c", "import time; time.sleep(3600)"])  # never stopped by its starter
    print("READY", flush=True)
    while True:
        signal.pause()
"""


@pytest.mark.parametrize("signame", SIGNALS)
@pytest.mark.parametrize("how", ["in with blocks", "reference lost"])
def test_the_process_harness_stops_every_server_it_started(how: str, signame: str, tmp_path: Path) -> None:
    """What benchmarks and chaos experiments do: servers in `with` blocks, under
    `interrupt_on_signals`. A process whose starter lost its reference is stopped at exit too."""
    process = _start([sys.executable, "-c", HARNESS, str(tmp_path), how])
    _interrupt_and_check(process, SIGNALS[signame], servers=3 if how == "reference lost" else 2)


@pytest.mark.parametrize("signame", SIGNALS)
def test_a_chaos_run_stops_its_servers(signame: str) -> None:
    """Experiment 06 restarts Redis: a run stopped by Ctrl-C or SIGTERM once its system is up
    leaves no Keel, PostgreSQL or Redis behind."""
    process = _start([sys.executable, "-m", "chaos", "06"])
    output = _interrupt_and_check(process, SIGNALS[signame], servers=3, ready=b"system up")
    assert process.returncode == 130, output


SESSION_TEST = """
import signal


def test_holds_the_session_redis(redis_url: str) -> None:
    print("READY", flush=True)
    while True:
        signal.pause()
"""


def test_the_test_session_stops_its_servers_on_sigterm(tmp_path: Path) -> None:
    """A test run killed by SIGTERM (a CI timeout) still tears down the session's servers."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_holds.py").write_text(SESSION_TEST)
    command = [sys.executable, "-m", "pytest", "-s", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    process = _start([*command, str(tmp_path / "test_holds.py")], cwd=tmp_path)
    output = _interrupt_and_check(process, signal.SIGTERM, servers=1)
    assert "Interrupted" in output or "KeyboardInterrupt" in output, output
