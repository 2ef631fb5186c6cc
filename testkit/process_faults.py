"""Process faults for chaos experiments: stop, kill, pause and resume a server by pid.

Linux only: it reads /proc. ``pause``/``resume`` act on the process and all its descendants,
because a server is often a tree (PostgreSQL is a postmaster plus one backend per connection)
and pausing only the parent leaves the backends answering. Descendants come from
/proc/<pid>/task/*/children where the kernel has it (CONFIG_PROC_CHILDREN), else from the parent
pid of every process in /proc.

Processes may vanish at any moment (a backend exits while we walk the tree): a descendant that is
gone is skipped. ``stop`` and ``kill`` of a pid that is already gone return None, since what was
asked for holds. ``pause``, ``resume`` and ``is_paused`` raise ProcessLookupError when ``pid``
itself does not exist.

When ``pid`` is a child of the calling process, ``stop`` and ``kill`` reap it and return its exit
code as subprocess reports it (-9 for SIGKILL). A ``subprocess.Popen`` for it then sees the
status as already taken: call its ``wait()`` to release it, but use the returned code. For any
other process they wait until it has exited (gone, or a zombie its own parent has yet to reap).

    pids = pause(postmaster_pid)   # the whole tree freezes: connections stay open, nothing answers
    resume(postmaster_pid)
    kill(postmaster_pid)           # crash without shutdown
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.01
DEFAULT_WAIT_SECONDS = 5.0
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return None if fields is None else fields[0]


def _exited(pid: int) -> bool:
    return _state(pid) in (None, "Z", "X")


def is_paused(pid: int) -> bool:
    """True if the process is stopped by a signal (state T in /proc/<pid>/stat)."""
    state = _state(pid)
    if state is None:
        raise ProcessLookupError(pid)
    return state == "T"


def _children_files_supported() -> bool:
    return (PROC / "self" / "task" / str(threading.get_native_id()) / "children").exists()


def _children_from_task_files(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for children_file in (PROC / str(pid) / "task").glob("*/children"):
            children += [int(child) for child in children_file.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass  # the process or one of its threads ended while we read
    return children


def _children_by_parent() -> defaultdict[int, list[int]]:
    by_parent: defaultdict[int, list[int]] = defaultdict(list)
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            by_parent[int(fields[1])].append(int(entry.name))
    return by_parent


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, … of ``pid``, parents before their children; [] if it is gone."""
    children_of: Callable[[int], list[int]] = _children_from_task_files
    if not _children_files_supported():
        by_parent = _children_by_parent()  # one scan of /proc serves the whole walk
        children_of = by_parent.__getitem__

    found: list[int] = []
    queue = deque(children_of(pid))
    while queue:
        child = queue.popleft()
        if child not in found:
            found.append(child)
            queue.extend(children_of(child))
    return found


def _signal(pid: int, signum: signal.Signals) -> bool:
    """Send ``signum``; False if the process was already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_states(pids: list[int], paused: bool, timeout: float) -> None:
    # Signals are delivered asynchronously: wait until every process that still exists shows the
    # new state, so that is_paused() right after pause() is true.
    deadline = time.monotonic() + timeout
    for pid in pids:
        while (state := _state(pid)) is not None and (state == "T") != paused and state not in ("Z", "X"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} still in state {state!r} after {timeout} s")
            time.sleep(POLL_SECONDS)


def pause(pid: int, timeout: float = DEFAULT_WAIT_SECONDS) -> list[int]:
    """SIGSTOP ``pid`` and all its descendants; returns the pids stopped, ``pid`` first."""
    if not _signal(pid, signal.SIGSTOP):
        raise ProcessLookupError(pid)
    paused, seen = [pid], {pid}
    # Walk again until nothing new appears: a child may have forked before it was stopped.
    while new := [child for child in descendants(pid) if child not in seen]:
        seen.update(new)
        stopped = [child for child in new if not _exited(child) and _signal(child, signal.SIGSTOP)]
        _wait_states(stopped, paused=True, timeout=timeout)
        paused += stopped
    _wait_states(paused, paused=True, timeout=timeout)
    return paused


def resume(pid: int, timeout: float = DEFAULT_WAIT_SECONDS) -> list[int]:
    """SIGCONT ``pid`` and all its descendants; returns the pids continued, ``pid`` first."""
    if _state(pid) is None:
        raise ProcessLookupError(pid)
    tree = [pid, *descendants(pid)]
    # Children first, so a parent that wakes up finds its children already running.
    resumed = [process for process in reversed(tree) if _signal(process, signal.SIGCONT)]
    resumed.reverse()
    _wait_states(resumed, paused=False, timeout=timeout)
    return resumed


def _wait_gone(pid: int, timeout: float) -> int | None:
    """Reap ``pid`` if it is our child (returning its exit code), else wait until it has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child, or already reaped
            if _exited(pid):
                return None
        else:
            if reaped == pid:
                return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {timeout} s")
        time.sleep(POLL_SECONDS)


def kill(pid: int, timeout: float = DEFAULT_WAIT_SECONDS) -> int | None:
    """SIGKILL ``pid`` and wait until it is gone; see the module docstring for the return value."""
    if not _signal(pid, signal.SIGKILL):
        return None
    return _wait_gone(pid, timeout)


def stop(pid: int, timeout: float = 10.0) -> int | None:
    """SIGTERM ``pid``; if it has not exited within ``timeout`` seconds, SIGKILL it.

    A paused process (and its paused descendants) is continued too: a stopped process cannot act
    on SIGTERM, and PostgreSQL's postmaster waits for its backends to exit.
    """
    if not _signal(pid, signal.SIGTERM):
        return None
    for process in [pid, *descendants(pid)]:
        if _state(process) == "T":
            _signal(process, signal.SIGCONT)
    try:
        return _wait_gone(pid, timeout)
    except TimeoutError:
        return kill(pid)
