"""CPU time of a process and everything below it, from Linux's /proc (None elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()  # the name (field 2) may hold spaces


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def tree_cpu_seconds(root: int) -> float | None:
    """User + system CPU seconds of `root`, its live descendants, and the children they reaped."""
    if not Path("/proc/self/stat").exists():
        return None
    total = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            fields = _fields(pid)
            pending.extend(_children(pid))
        except (OSError, ValueError):
            continue  # exited meanwhile
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / _TICKS
