"""Throwaway servers for tests, benchmarks and experiments, one module each (`servers/<name>.py`),
started from the binaries of a pip package on a free loopback port in a temp dir of their own.

Each module offers the same three things, and a new server (NATS, say) should too:

- a context manager that starts the server and yields an object with a `url`, stopping the server
  and removing its directory when the block ends, on errors too (`postgres_process`,
  `redis_server`); it raises RuntimeError with the end of the server's log when the server cannot
  start, so a test that needs it fails, never skips; processes are started with
  `testkit.processes.start_session`, so that nothing outlives the interpreter;
- `<name>_url(env_var=...)` style helpers built on `url_from_env_or`: a URL given in the
  environment is used as it is, else a throwaway server's;
- `main()` built on `serve_until_interrupted`: `python -m testkit.servers.<name>` prints a URL
  and serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from testkit.processes import interrupt_on_signals


class Served(Protocol):
    @property
    def url(self) -> str: ...


@contextlib.contextmanager
def url_from_env_or(env_var: str, start: Callable[[], AbstractContextManager[Served]]) -> Iterator[str]:
    """The URL in os.environ[env_var] when it is set and not empty (nothing is started), else the
    URL of the server `start()` starts, stopped when the block ends."""
    if os.environ.get(env_var):
        yield os.environ[env_var]
        return
    with start() as server:
        yield server.url


def serve_until_interrupted(start: Callable[[], AbstractContextManager[Served]]) -> None:
    """Start a server, print its URL, and serve until Ctrl-C or SIGTERM, which stop it."""
    interrupt_on_signals()  # a signal unwinds through the server's own cleanup
    with contextlib.suppress(KeyboardInterrupt), start() as server:
        print(server.url, flush=True)
        while True:
            signal.pause()
