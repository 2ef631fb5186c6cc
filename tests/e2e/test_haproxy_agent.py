"""HAProxy fed by Keel (issue 20's first piece): each node answers HAProxy's agent check with its
adaptive concurrency limit (`KEEL_AGENT_PORT`), and HAProxy applies it as the server's maxconn,
so requests past it wait in HAProxy's queue rather than in the node's socket. Two nodes with
different limits (pinned, min = max, so nothing here depends on the controller's timing); the
agent reports what a node takes without shedding, its limit less the shedder's hysteresis band."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import httpx
import pytest
from testkit.health import until
from testkit.ports import free_port
from testkit.processes import keel_cmd, keel_output, server
from testkit.servers.haproxy import haproxy

from keel.observability.agent_check import agent_line


def _limit(limit: int) -> dict[str, str]:
    return {
        "KEEL_CONCURRENCY_LIMIT_INITIAL": str(limit),
        "KEEL_CONCURRENCY_LIMIT_MIN": str(limit),
        "KEEL_CONCURRENCY_LIMIT_MAX": str(limit),
    }


def test_haproxy_applies_each_nodes_concurrency_limit_as_its_maxconn(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}", "KEEL_WORKERS": "1"}
    keel_output(env, "migrate")
    ports = {"a": free_port(), "b": free_port()}
    agents = {"a": free_port(), "b": free_port()}
    # What each node takes without shedding: its limit (pinned) less the shedder's 15 % band.
    maxconn = {"a": 6, "b": 3}  # 7 × 0.85 and 4 × 0.85, rounded
    with (
        server(
            "a",
            keel_cmd("serve"),
            {**env, "KEEL_PORT": str(ports["a"]), "KEEL_AGENT_PORT": str(agents["a"]), **_limit(7)},
            tmp_path / "a.log",
            ports["a"],
        ),
        server(
            "b",
            keel_cmd("serve"),
            {**env, "KEEL_PORT": str(ports["b"]), "KEEL_AGENT_PORT": str(agents["b"]), **_limit(4)},
            tmp_path / "b.log",
            ports["b"],
        ),
    ):
        for name, port in agents.items():  # the agent's own answer, as HAProxy reads it
            with socket.create_connection(("127.0.0.1", port), timeout=5) as agent:
                assert agent.recv(100) == f"maxconn:{maxconn[name]}\n".encode()
        with haproxy(tmp_path / "haproxy", list(ports.items()), agents=agents) as proxy:
            proxy.wait_for({"a": "UP", "b": "UP"})
            until(
                lambda: {name: proxy.stat()[name]["slim"] for name in ports} == {"a": "6", "b": "3"},
                "HAProxy applies the agents' maxconn",
            )
            assert httpx.get(f"{proxy.url}/healthz", timeout=10).status_code == 200


def test_the_agent_line() -> None:
    # No state word: `ready` would undo an operator's drain or maintenance of the server.
    assert agent_line(16.8) == b"maxconn:17\n"
    assert agent_line(3.4) == b"maxconn:3\n"
    assert agent_line(0.4) == b"maxconn:1\n"  # never 0: HAProxy reads that as no limit


def test_workers_and_an_agent_port_are_refused(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_REDIS_URL": "redis://127.0.0.1:1/0",
        "KEEL_WORKERS": "2",
        "KEEL_AGENT_PORT": str(free_port()),
    }
    with pytest.raises(RuntimeError, match="agent-check port"):
        keel_output(env, "serve", timeout=60)


def test_requests_past_the_limit_wait_in_haproxy_then_get_its_jittered_503(tmp_path: Path) -> None:
    """A node whose limit is 1, busy with a request whose body is still coming: the next request
    waits in HAProxy's queue, not in Keel's socket, and once `timeout queue` is over HAProxy
    answers it itself, a problem with a Retry-After of 1 to 3 s."""
    env = {**os.environ, "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}", "KEEL_WORKERS": "1"}
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    port, agent = free_port(), free_port()
    node_env = {**env, "KEEL_PORT": str(port), "KEEL_AGENT_PORT": str(agent), **_limit(1)}
    node_env["KEEL_HTTP_BODY_TIMEOUT_SECONDS"] = "60"
    with (
        server("node", keel_cmd("serve"), node_env, tmp_path / "node.log", port),
        haproxy(tmp_path / "haproxy", [("node", port)], agents={"node": agent}) as proxy,
    ):
        proxy.wait_for({"node": "UP"})
        until(lambda: proxy.stat()["node"]["slim"] == "1", "HAProxy applies the agent's maxconn")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as slow:
            head = (
                "POST /v1/profiles HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 200\r\n\r\n{{"
            )
            slow.sendall(head.encode())
            until(lambda: proxy.stat()["node"]["scur"] == "1", "the slow upload holds the node's one slot")
            answer = httpx.get(f"{proxy.url}/healthz", timeout=30)
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["type"] == "urn:keel:problem:unavailable"  # HAProxy's, not Keel's shed
            assert answer.headers["retry-after"] in {"1", "2", "3"}
            assert int(proxy.stat()["BACKEND"]["qmax"]) >= 1  # it waited in HAProxy's queue


def test_in_haproxys_queue_a_single_read_goes_before_a_list(tmp_path: Path) -> None:
    """Priority classes carry Keel's priorities into the proxy's queue: a node pinned to one
    request at a time, busy; a list is queued first, a single read second; once the node is
    free the read is served first (one at a time, so it also finishes first)."""
    env = {**os.environ, "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}", "KEEL_WORKERS": "1"}
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    headers = {"Authorization": f"Bearer {token}"}
    port, agent = free_port(), free_port()
    node_env = {**env, "KEEL_PORT": str(port), "KEEL_AGENT_PORT": str(agent), **_limit(1)}
    node_env["KEEL_HTTP_BODY_TIMEOUT_SECONDS"] = "60"
    with (
        server("node", keel_cmd("serve"), node_env, tmp_path / "node.log", port),
        # The queue's wait made long for this test only: the two requests must still be queued
        # when the node frees up, however slow the machine.
        haproxy(
            tmp_path / "haproxy", [("node", port)], agents={"node": agent}, timeouts={"queue": "60s"}
        ) as proxy,
    ):
        proxy.wait_for({"node": "UP"})
        until(lambda: proxy.stat()["node"]["slim"] == "1", "HAProxy applies the agent's maxconn")
        answers: list[int] = []

        def request(path: str) -> None:
            answers.append(httpx.get(f"{proxy.url}{path}", headers=headers, timeout=60).status_code)

        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as slow:
            slow.sendall(
                (
                    "POST /v1/profiles HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{{"
                ).encode()
            )
            until(lambda: proxy.stat()["node"]["scur"] == "1", "the slow upload holds the node's one slot")
            lister = threading.Thread(target=request, args=("/v1/profiles",))
            lister.start()
            until(lambda: proxy.stat()["BACKEND"]["qcur"] == "1", "the list waits in the queue")
            reader = threading.Thread(target=request, args=("/v1/profiles/eu1_01JZ0000000000000000000000",))
            reader.start()
            until(lambda: proxy.stat()["BACKEND"]["qcur"] == "2", "the read waits in the queue too")
            slow.sendall(b"}")  # the upload ends: the node is free
            lister.join(timeout=60)
            reader.join(timeout=60)
        assert sorted(answers) == [200, 404]
    # The order the node served them in: its access log, one line at each request's end, and the
    # node took one request at a time.
    served = [
        line["route"]
        for line in map(json.loads, (tmp_path / "node.log").read_text().splitlines())
        if line.get("event") == "request" and line.get("method") == "GET" and line["route"].startswith("/v1/")
    ]
    assert served == ["/v1/profiles/{profile_id}", "/v1/profiles"]
