"""`keel serve --workers N`: how many processes serve HTTP, and what each of them runs.

The worker model is uvicorn's own supervisor (`uvicorn.run(..., workers=N)`): the parent binds
the one listening socket and hands it to N spawned workers, which accept on it in turn; it pings
each worker, replaces one that died or hangs, and on SIGTERM passes the signal on and waits for
the workers, each of which stops accepting at once and gives its requests in flight
`KEEL_SHUTDOWN_GRACE_SECONDS` to finish. Nothing here re-implements that, with additions
(`supervise`): the parent closes its copy of the listening socket as soon as it is told to stop;
it refuses uvicorn's signals that change the number of workers (SIGHUP, SIGTTIN, SIGTTOU); and
it exits non-zero when it stopped without being told to.
uvicorn's parent keeps it open until every worker has exited, so the kernel went on accepting
connections into a backlog that no worker would serve: a client hung until the grace ran out,
then was reset, instead of being refused at once and retrying elsewhere.

A spawned worker imports `keel.bootstrap.worker_process` by name and builds everything from the
environment, which the parent has completed first (`worker_environment`): the worker count
resolved, and the command line's overrides as KEEL_ variables.

Several processes behind one port share what must be shared through Redis (rate limits, cache
invalidations), so more than one worker needs KEEL_REDIS_URL; each worker's metrics and probes
are its own, on the management port's slot it takes (`management_ports`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from keel.config import Settings

if TYPE_CHECKING:
    import uvicorn

WORKER_APP = "keel.bootstrap.worker_process:app"
WORKER_HTTP_PROTOCOL = "keel.bootstrap.worker_process:HttpProtocol"
SUPERVISOR_PID = "KEEL_SUPERVISOR_PID"  # set for the workers by the parent, not a setting
_PR_SET_PDEATHSIG = 1
_log = structlog.get_logger("keel.workers")


class WorkersRefused(ValueError):
    """A worker count this configuration cannot run safely: a sentence for the operator."""


def worker_count(settings: Settings, cores: int | None = None) -> int:
    """How many HTTP worker processes `keel serve` runs: KEEL_WORKERS, or (0) one per core when
    the configuration lets several processes share their state, else one."""
    # An agent-check port reports one process's limit for the whole node: one worker with it.
    shared = settings.redis_url is not None and settings.grpc_port is None and settings.agent_port is None
    if settings.workers == 0:
        # The cores this process may run on (its affinity, as a container's cpuset sets it), not
        # the machine's. A CPU quota without a cpuset is not seen: set KEEL_WORKERS there.
        return max(1, cores if cores is not None else _usable_cores()) if shared else 1
    if settings.workers > 1:
        if settings.agent_port is not None:
            raise WorkersRefused(
                f"{settings.workers} workers and an agent-check port: the agent reports one process's"
                " concurrency limit as the node's; run one worker per node behind HAProxy"
            )
        if settings.grpc_port is not None:
            raise WorkersRefused(
                f"{settings.workers} workers and a gRPC port: serve gRPC in a process of its own"
                " (`keel serve --grpc-only`), or run one worker"
            )
        if settings.redis_url is None:
            raise WorkersRefused(
                f"{settings.workers} workers without KEEL_REDIS_URL: each process would keep its own rate"
                " limits and serve profile copies another process has replaced; set KEEL_REDIS_URL,"
                " or run one worker"
            )
    return settings.workers


def _usable_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere the machine's count
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def worker_environment(count: int, overrides: Mapping[str, object]) -> dict[str, str]:
    """The KEEL_ variables a spawned worker must see besides the parent's own: the resolved
    count, the command line's overrides (a worker reads only its environment), and the
    supervisor's pid (`exit_with_the_supervisor`)."""
    variables = {f"KEEL_{name.upper()}": str(value) for name, value in overrides.items()}
    variables["KEEL_WORKERS"] = str(count)
    variables[SUPERVISOR_PID] = str(os.getpid())
    return variables


def exit_with_the_supervisor() -> None:
    """In a worker: have the kernel send it SIGTERM (a graceful stop) when the supervisor dies,
    SIGKILL included, so that no orphan goes on serving the port unsupervised. Linux's
    PR_SET_PDEATHSIG; a no-op elsewhere. A supervisor already gone by then is noticed too."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)


def management_ports(settings: Settings) -> list[int]:
    """The ports a process may serve its management endpoints on, first free taken: with N
    workers, N consecutive ports from KEEL_MANAGEMENT_PORT, one per worker (a replaced worker
    takes the slot its predecessor left), each scraped as a target of its own."""
    if settings.management_port is None:
        return []
    if settings.management_port == 0:
        return [0]
    return list(range(settings.management_port, settings.management_port + max(1, settings.workers)))


def supervise(config: uvicorn.Config) -> None:
    """Run `config.workers` workers as `uvicorn.run` does (bind the socket here, hand it to
    the supervisor), with the parent's copy of the socket closed on SIGTERM and SIGINT.

    Why a subclass of `uvicorn.supervisors.multiprocess.Multiprocess`: it has no hook for what
    to do on a stop signal, and `handle_term`/`handle_int` are the methods its signal loop calls
    (uvicorn 0.54, pinned in the lock files). What relies on them is checked end to end by
    tests/e2e/test_workers.py (a SIGTERM refuses new connections while a request in flight
    finishes): a uvicorn that renamed them fails that test, not silently."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        told_to_stop = False

        def _stop_listening(self) -> None:
            self.told_to_stop = True
            for listener in self.sockets:
                # Closed here only: each worker closes its own copy as its shutdown begins, and
                # the last close makes the kernel refuse new connections.
                listener.close()

        def handle_term(self) -> None:
            self._stop_listening()
            super().handle_term()

        def handle_int(self) -> None:
            self._stop_listening()
            super().handle_int()

        # uvicorn adds a worker on SIGTTIN and replaces them all, new before old, on SIGHUP:
        # either runs one worker more than the management ports have slots for (and a worker
        # that cannot start stops the node). Refused: restart the node to change its workers.
        def handle_hup(self) -> None:
            _log.warning("signal_refused", signal="SIGHUP", reason="restart keel serve to replace workers")

        def handle_ttin(self) -> None:
            _log.warning("signal_refused", signal="SIGTTIN", reason="set --workers and restart keel serve")

        def handle_ttou(self) -> None:
            _log.warning("signal_refused", signal="SIGTTOU", reason="set --workers and restart keel serve")

    listener: socket.socket = config.bind_socket()
    supervisor = Supervisor(config, sockets=[listener])
    supervisor.run()
    if not supervisor.told_to_stop:
        # uvicorn stops the node when a replacement worker fails to start (its database
        # unreachable, say): exit non-zero, so that the node's own supervisor restarts it.
        raise SystemExit(3)
