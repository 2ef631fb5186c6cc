"""A fleet on real components: HAProxy (testkit/servers/haproxy.py) in front of two Keel nodes on
one PostgreSQL and one Redis, each node checked on /readyz. A node killed with SIGKILL under a
stream of writes costs no acknowledged write and at most the requests in flight on it (answered
by HAProxy as problem+json); HAProxy takes it out, and puts it back once it is restarted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from testkit.health import until
from testkit.ports import free_port
from testkit.processes import keel_cmd, keel_output, server
from testkit.servers.haproxy import Haproxy, haproxy

from tests.integration.test_key_verifier_migration import _fresh_postgres_database

THREADS = 4
_UNLIMITED = {"policies": [{"name": "burst", "quota": 1_000_000, "window_seconds": 1}], "concurrency": 10_000}


@dataclass
class Fleet:
    token: str
    env: dict[str, str]
    ports: dict[str, int]
    logs: Path
    stack: ExitStack
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    balancer: Haproxy | None = None

    @property
    def proxy(self) -> Haproxy:
        assert self.balancer is not None, "HAProxy starts once the nodes answer"
        return self.balancer

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, name: str) -> None:
        port = self.ports[name]
        self.processes[name] = self.stack.enter_context(
            server(
                f"keel node {name}",
                keel_cmd("serve"),
                {**self.env, "KEEL_PORT": str(port)},
                self.logs / f"{name}.log",
                port,
            )
        )

    def served_reads(self, name: str) -> float:
        """`GET /v1/profiles/{id}` answers node `name` has served, from its own /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("keel_http_requests_total{")
            and 'method="GET"' in line
            and 'route="/v1/profiles/{profile_id}"' in line
        )


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Fleet]:
    database = asyncio.run(_fresh_postgres_database(postgres_url, "keel_fleet"))
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database,
        "KEEL_REDIS_URL": redis_url,
        "KEEL_WORKERS": "1",
        "KEEL_TRUSTED_PROXY_HOPS": "1",  # HAProxy's X-Forwarded-For
        # Longer than HAProxy keeps an idle connection to a node for reuse (docs/fleet.md).
        "KEEL_HTTP_KEEP_ALIVE_SECONDS": "75",
        "KEEL_RATELIMIT_PLANS": json.dumps({"standard": _UNLIMITED, "anonymous": _UNLIMITED}),
    }
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    with ExitStack() as stack:
        nodes = Fleet(
            token=token,
            env=env,
            ports={"a": free_port(), "b": free_port()},
            logs=tmp_path,
            stack=stack,
        )
        for name in nodes.ports:
            nodes.start(name)
        nodes.balancer = stack.enter_context(haproxy(tmp_path / "haproxy", list(nodes.ports.items())))
        nodes.proxy.wait_for({"a": "UP", "b": "UP"})
        yield nodes


@contextmanager
def writers(fleet: Fleet) -> Iterator[Writes]:
    writes = Writes()
    threads = [threading.Thread(target=writes.run, args=(fleet, n)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        yield writes
    finally:
        writes.stop.set()
        for thread in threads:
            thread.join(timeout=60)


class Writes:
    """Creates through HAProxy, each thread one at a time, until told to stop: the acknowledged
    ones (id and handle) and the failed ones (when sent, status, content type, body)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: list[tuple[str, str]] = []
        self.failed: list[tuple[float, int, str, str]] = []

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def run(self, fleet: Fleet, thread: int) -> None:
        with httpx.Client(base_url=fleet.proxy.url, headers=fleet.headers, timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                handle = f"w{thread}_{n}"
                sent_at = time.monotonic()
                try:
                    answer = client.post(
                        "/v1/profiles",
                        json={
                            "handle": handle,
                            "emails": [{"address": f"{handle}@example.com", "primary": True}],
                        },
                    )
                except httpx.RemoteProtocolError as error:  # cut by HAProxy: see the assertions
                    with self.lock:
                        self.failed.append((sent_at, 0, "", f"{type(error).__name__}: {error}"))
                    continue
                with self.lock:
                    if answer.status_code == 201:
                        self.acknowledged.append((answer.json()["id"], handle))
                    else:
                        self.failed.append(
                            (
                                sent_at,
                                answer.status_code,
                                answer.headers.get("content-type", ""),
                                answer.text[:300],
                            )
                        )


def test_a_node_killed_under_writes_costs_no_acknowledged_write(fleet: Fleet) -> None:
    with writers(fleet) as writes:
        until(lambda: writes.count() >= 40, "writes acknowledged through both nodes")
        os.killpg(fleet.processes["a"].pid, signal.SIGKILL)
        at_kill = writes.count()
        fleet.proxy.wait_for({"a": "DOWN"})
        down_at = time.monotonic()  # HAProxy has taken the node out (checked after: an upper bound)
        until(lambda: writes.count() >= at_kill + 40, "writes acknowledged by the node left")
    # Only requests that reached the killed node failed: those in flight on it, and those sent on
    # a connection to it HAProxy had kept for reuse before it noticed the connection closed. Not
    # one request sent once HAProxy had taken the node out failed. Each failure is either
    # answered by HAProxy as a problem that says the outcome is unknown, or cut: HAProxy closes
    # the client's connection when the node died with the request on a connection it had
    # reused (so that the client may retry), or after the answer's head it had passed on.
    assert [failure for failure in writes.failed if failure[0] > down_at] == [], writes.failed
    for _, status, content_type, body in writes.failed:
        if status == 0:
            assert body.startswith("RemoteProtocolError: "), body
            continue
        assert (status, content_type) == (502, "application/problem+json"), body
        assert json.loads(body)["type"] == "urn:keel:problem:outcome-unknown"
    # Every acknowledged write is there, read back through the node left.
    with httpx.Client(base_url=fleet.proxy.url, headers=fleet.headers, timeout=30) as client:
        for profile_id, handle in writes.acknowledged:
            read = client.get(f"/v1/profiles/{profile_id}")
            assert (read.status_code, read.json().get("handle")) == (200, handle), read.text
    # Restarted, the node is checked back in and served again.
    fleet.start("a")
    fleet.proxy.wait_for({"a": "UP", "b": "UP"})
    before = fleet.served_reads("a")
    profile_id = writes.acknowledged[0][0]
    with httpx.Client(base_url=fleet.proxy.url, headers=fleet.headers, timeout=30) as client:
        for _ in range(10):  # round robin: half of them reach the restarted node
            assert client.get(f"/v1/profiles/{profile_id}").status_code == 200
    assert fleet.served_reads("a") >= before + 1


def test_with_every_node_down_haproxy_answers_a_problem_with_retry_after(fleet: Fleet) -> None:
    for name in ("a", "b"):
        os.killpg(fleet.processes[name].pid, signal.SIGKILL)
    fleet.proxy.wait_for({"a": "DOWN", "b": "DOWN"})
    waits = set()
    for _ in range(20):
        url = f"{fleet.proxy.url}/v1/profiles/eu1_01M977N90FNC0XW4XT2ZE1XM79"
        answer = httpx.get(url, headers=fleet.headers)
        assert (answer.status_code, answer.headers["content-type"]) == (503, "application/problem+json")
        assert answer.json()["type"] == "urn:keel:problem:unavailable"
        waits.add(answer.headers["retry-after"])
    # Jittered, 1 to 3 s: 20 answers all alike would happen once in 3**19.
    assert waits <= {"1", "2", "3"}
    assert len(waits) > 1
