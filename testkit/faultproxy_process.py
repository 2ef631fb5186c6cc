"""A fault proxy in a process of its own, driven over its control API.

A `FaultProxy` in the caller's event loop forwards only as fast as that loop lets it: chaos
experiment 05 found database round trips through a proxy sharing the runner's loop taking
seconds while the runner opened 500 connections, so Keel's background passes ran out of their
5 s deadline and opened the database breaker just before the stampede: a fault the experiment
never injected. In a process of its own, the proxy's delays are the faults set on it.

    proxy = FaultProxyProcess(target_port, seed=1)
    proxy.start()           # blocking: from a thread when an event loop is running
    proxy.set_faults(latency_ms=100)
    proxy.clear()
    proxy.stop()

The process ends when its stdin closes, so it goes with the process that started it even if
that one is killed.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import tempfile
from typing import IO, Any

from testkit.faultproxy import FaultProxyClient
from testkit.processes import REPO, start_session, stop

START_TIMEOUT_SECONDS = 30.0


class FaultProxyProcess:
    def __init__(self, target_port: int, *, seed: int, target_host: str = "127.0.0.1") -> None:
        self._target = f"{target_host}:{target_port}"
        self._seed = seed
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._client: FaultProxyClient | None = None
        self._stderr: IO[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "testkit.faultproxy",
            "--target", self._target, "--seed", str(self._seed), "--exit-on-stdin-eof",
        ]  # fmt: skip
        # stderr to a file, never an unread pipe: a proxy that logs enough would block on it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = start_session(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        try:
            ready: dict[str, Any] = json.loads(self._ready_line())
            self.port = int(ready["listen_port"])
            self._client = FaultProxyClient(ready["control_url"])
        except Exception:
            self.stop()
            raise

    def _ready_line(self) -> bytes:
        """The line the proxy prints once it listens; fails with its stderr if it exits or
        prints nothing within START_TIMEOUT_SECONDS."""
        assert self.process is not None
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            line = self.process.stdout.readline() if selector.select(START_TIMEOUT_SECONDS) else b""
        if not line:
            raise RuntimeError(f"the fault proxy to {self._target} did not start: {self._errors()}")
        return line

    def _errors(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def set_faults(self, **faults: Any) -> None:
        self._control().set(**faults)

    def clear(self) -> None:
        self._control().clear()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            stop(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _control(self) -> FaultProxyClient:
        if self._client is None:
            raise RuntimeError("the fault proxy is not started")
        return self._client
