"""Waiting for a started server to answer its health check."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

START_TIMEOUT = 60.0
POLL_SECONDS = 0.05


def wait_healthy(
    base_url: str,
    process: subprocess.Popen[bytes],
    log: Path | None = None,
    *,
    name: str = "the server",
    path: str = "/healthz",
    timeout: float = START_TIMEOUT,
) -> None:
    """Return once `base_url + path` answers 200. Raise RuntimeError, with the end of `log`, if
    `process` exits first or `timeout` seconds pass: a caller that needs the server fails, it
    never skips. Blocking: from an event loop, run it in a thread."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode} before {path} answered; {_tail(log)}"
                )
            try:
                if client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not answer {base_url}{path} within {timeout:.0f} s; {_tail(log)}"
                )
            time.sleep(POLL_SECONDS)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return "no log"
    return "log tail:\n" + log.read_text(errors="replace")[-3000:]


def until(
    condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT, poll: float = 0.02
) -> None:
    """Return once `condition()` is true; TimeoutError naming `what` after `timeout` seconds. For
    what a test waits on by polling (a worker replaced, a node checked out): the bound is a
    failure's, never a measurement."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(poll)
