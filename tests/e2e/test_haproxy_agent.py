"""HAProxy fed by Keel (issue 20's first piece): each node answers HAProxy's agent check with its
adaptive concurrency limit (`KEEL_AGENT_PORT`), and HAProxy applies it as the server's maxconn,
so requests past it wait in HAProxy's queue rather than in the node's socket. Two nodes with
different limits (pinned, min = max, so nothing here depends on the controller's timing)."""

from __future__ import annotations

import os
import socket
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
    limits = {"a": 7, "b": 3}
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
            {**env, "KEEL_PORT": str(ports["b"]), "KEEL_AGENT_PORT": str(agents["b"]), **_limit(3)},
            tmp_path / "b.log",
            ports["b"],
        ),
    ):
        for name, port in agents.items():  # the agent's own answer, as HAProxy reads it
            with socket.create_connection(("127.0.0.1", port), timeout=5) as agent:
                assert agent.recv(100) == f"ready maxconn:{limits[name]}\n".encode()
        with haproxy(tmp_path / "haproxy", list(ports.items()), agents=agents) as proxy:
            proxy.wait_for({"a": "UP", "b": "UP"})
            until(
                lambda: {name: row["slim"] for name, row in proxy.stat().items()} == {"a": "7", "b": "3"},
                "HAProxy applies the agents' maxconn",
            )
            assert httpx.get(f"{proxy.url}/healthz", timeout=10).status_code == 200


def test_the_agent_line() -> None:
    assert agent_line(None) == b"ready\n"
    assert agent_line(16.8) == b"ready maxconn:16\n"
    assert agent_line(0.4) == b"ready maxconn:1\n"  # never 0: HAProxy reads that as no limit


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
