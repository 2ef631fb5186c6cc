"""Process faults on real processes: a shell with a child, as a server with its workers."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import process_faults


def program(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH"
    return path


SH, SLEEP, TRUE = program("sh"), program("sleep"), program("true")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for_descendants(pid: int, count: int) -> list[int]:
    deadline = time.monotonic() + 30  # bounds a hang only
    while len(found := process_faults.descendants(pid)) < count:
        assert time.monotonic() < deadline, f"{pid} never had {count} descendants"
        time.sleep(0.01)
    return found


@pytest.fixture
def tree() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A shell whose child sleeps; both are killed and reaped afterwards, whatever the test did."""
    shell = subprocess.Popen([SH, "-c", "sleep 30 & wait"])
    child = -1
    try:
        [child] = wait_for_descendants(shell.pid, 1)
        yield shell, child
    finally:
        for pid in (child, shell.pid):
            if pid > 0:
                process_faults.kill(pid)
        shell.wait()


def test_descendants_lists_the_whole_tree(tree: tuple[subprocess.Popen[bytes], int]) -> None:
    shell, child = tree
    assert process_faults.descendants(shell.pid) == [child]
    assert process_faults.descendants(child) == []


def test_pause_stops_parent_and_child_and_resume_restores(tree: tuple[subprocess.Popen[bytes], int]) -> None:
    shell, child = tree
    assert process_faults.pause(shell.pid) == [shell.pid, child]
    assert process_faults.is_paused(shell.pid)
    assert process_faults.is_paused(child)
    assert process_faults.resume(shell.pid) == [shell.pid, child]
    assert not process_faults.is_paused(shell.pid)
    assert not process_faults.is_paused(child)


def test_kill_reaps_our_child_even_when_paused(tree: tuple[subprocess.Popen[bytes], int]) -> None:
    shell, child = tree
    process_faults.pause(shell.pid)
    assert process_faults.kill(shell.pid) == -9
    assert not Path(f"/proc/{shell.pid}").exists()  # reaped, not a zombie
    assert process_faults.kill(child) is None  # not our child: waited for, reaped by its new parent
    assert not alive(child)
    assert process_faults.kill(shell.pid) is None  # already gone: nothing to do, no error


def test_stop_terminates_a_paused_process_gracefully() -> None:
    sleeper = subprocess.Popen([SLEEP, "30"])
    try:
        process_faults.pause(sleeper.pid)
        assert process_faults.stop(sleeper.pid, timeout=5) == -15  # SIGTERM worked, once continued
    finally:
        process_faults.kill(sleeper.pid)
        sleeper.wait()


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    stubborn = subprocess.Popen([SH, "-c", "trap '' TERM; exec sleep 30"])
    try:
        # The trap is in place once the shell has exec'd sleep, which keeps the ignored TERM.
        deadline = time.monotonic() + 30  # bounds a hang only
        while Path(f"/proc/{stubborn.pid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_faults.stop(stubborn.pid, timeout=0.3) == -9
    finally:
        process_faults.kill(stubborn.pid)
        stubborn.wait()


def test_a_missing_process_is_reported() -> None:
    gone = subprocess.Popen([TRUE])
    gone.wait()
    with pytest.raises(ProcessLookupError):
        process_faults.pause(gone.pid)
    with pytest.raises(ProcessLookupError):
        process_faults.is_paused(gone.pid)
    assert process_faults.descendants(gone.pid) == []
