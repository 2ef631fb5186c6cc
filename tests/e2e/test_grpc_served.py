"""gRPC as an operator runs it: `keel serve --grpc-port` (a core), `keel serve --core` (an edge
in front of it), and a client generated from the .proto by a third party's tool."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from testkit.health import wait_healthy
from testkit.ports import free_port

from tests.e2e.test_served_process import REPO, _keel


@dataclass
class Split:
    grpc_target: str
    core_url: str
    edge_url: str
    token: str
    edge_token: str
    edge_log: Path
    core_log: Path


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    directory = tmp_path_factory.mktemp("split")
    grpc_port = free_port()
    core_env = {
        **dict(__import__("os").environ),
        "KEEL_DATABASE_URL": f"sqlite:///{directory / 'keel.sqlite3'}",
        "KEEL_PORT": str(free_port()),
        "KEEL_GRPC_PORT": str(grpc_port),
    }
    _keel(core_env, "migrate")
    token = _keel(core_env, "keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").strip()
    edge_token = _keel(core_env, "keys", "create", "--scopes", "edge", "--name", "edge", "--quiet").strip()
    edge_env = {
        **{k: v for k, v in core_env.items() if k != "KEEL_GRPC_PORT"},
        "KEEL_PORT": str(free_port()),
        "KEEL_CORE_API_KEY": edge_token,
    }
    processes = []
    try:
        core_log = directory / "core.log"
        with core_log.open("w") as log:
            core = subprocess.Popen(
                [sys.executable, "-m", "keel", "serve"], env=core_env, stdout=log, stderr=log
            )
        processes.append(core)
        core_url = f"http://127.0.0.1:{core_env['KEEL_PORT']}"
        wait_healthy(core_url, core, core_log)
        edge_log = directory / "edge.log"
        with edge_log.open("w") as log:
            edge = subprocess.Popen(
                [sys.executable, "-m", "keel", "serve", "--core", f"grpc://127.0.0.1:{grpc_port}"],
                env=edge_env,
                stdout=log,
                stderr=log,
            )
        processes.append(edge)
        edge_url = f"http://127.0.0.1:{edge_env['KEEL_PORT']}"
        wait_healthy(edge_url, edge, edge_log)
        yield Split(f"127.0.0.1:{grpc_port}", core_url, edge_url, token, edge_token, edge_log, core_log)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)


def test_a_client_generated_by_a_third_party_tool_exercises_every_rpc(split: Split, tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'contracts' / 'proto'}",
            f"--python_out={stubs}",
            f"--grpc_python_out={stubs}",
            "keel/profiles/v1/profiles.proto",
        ],
        check=True,
        timeout=60,
    )
    for package in ("keel", "keel/profiles", "keel/profiles/v1"):
        (stubs / package / "__init__.py").touch()  # regular packages: found before Keel's own
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/e2e/third_party_grpc_client.py"),
            str(stubs),
            split.grpc_target,
            split.token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["caller_scopes"] == ["profiles:read", "profiles:write"]
    assert seen["created"] == {"version": 1, "replayed": False}
    assert seen["replayed"] == {"same_id": True, "replayed": True}
    assert seen["got"] == {"handle": "grace_h", "attributes": {"level": 3}}
    assert seen["updated"] == {"version": 2, "has_display_name": False, "attributes": {"level": 4}}
    assert seen["stale_update"] == {"code": "FAILED_PRECONDITION", "reason": "VERSION_MISMATCH"}
    assert seen["batch"] == {"ids": [True], "missing": ["eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J"]}
    assert seen["listed"] == ["grace_h"]
    assert seen["invalid_create"]["code"] == "INVALID_ARGUMENT"
    assert seen["invalid_create"]["reason"] == "VALIDATION"
    assert {"/handle", "/emails/0/address"} <= set(seen["invalid_create"]["fields"])
    assert seen["after_delete"] == {"code": "NOT_FOUND", "reason": "NOT_FOUND"}
    assert seen["handles"] == {"taken": False, "free": True}
    assert seen["invalid_handle"]["code"] == "INVALID_ARGUMENT"
    assert seen["invalid_handle"]["fields"] == ["/handle"]
    assert seen["handle_after_delete"] is True
    assert seen["no_key"] == {"code": "UNAUTHENTICATED", "reason": "UNAUTHENTICATED"}
    assert seen["health"] == "SERVING"
    assert {
        "keel.profiles.v1.ProfileService",
        "keel.profiles.v1.CallerService",
        "grpc.health.v1.Health",
    } <= set(seen["services"])


def test_an_edge_serves_rest_through_the_core(split: Split) -> None:
    headers = {"Authorization": f"Bearer {split.token}"}
    created = httpx.post(
        f"{split.edge_url}/v1/profiles",
        json={"handle": "edge_made", "emails": [{"address": "edge@example.com", "primary": True}]},
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    # The core stored it: its own REST API serves what the edge created.
    on_core = httpx.get(f"{split.core_url}/v1/profiles/{created.json()['id']}", headers=headers, timeout=10)
    assert on_core.status_code == 200
    assert on_core.json()["handle"] == "edge_made"
    ready = httpx.get(f"{split.edge_url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"core": "serving", "edge_key": "accepted"}
    missing = httpx.get(
        f"{split.edge_url}/v1/profiles/eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J", headers=headers, timeout=10
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    # No secret is logged, on either side: neither the caller's nor the edge's own.
    for log in (split.edge_log, split.core_log):
        text = log.read_text()
        for secret in (split.token.split("_", 2)[2], split.edge_token.split("_", 2)[2]):
            assert secret not in text


def test_grpc_alone_serves_its_metrics_on_the_http_port(tmp_path: Path) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        **dict(__import__("os").environ),
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_PORT": str(metrics_port),
    }
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", "profiles:read", "--quiet").strip()
    log_path = tmp_path / "grpc-only.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "keel", "serve", "--grpc-only", "--grpc-port", str(grpc_port)],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no metrics endpoint"
                time.sleep(0.1)
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc;"
                "from keel.api.grpc.wire.v1 import profiles_pb2 as pb, profiles_pb2_grpc as s;"
                "c = grpc.insecure_channel(sys.argv[1]);"
                "h = health_pb2_grpc.HealthStub(c);"
                "print(h.Check(health_pb2.HealthCheckRequest(), timeout=5).status);"
                "print(','.join(s.CallerServiceStub(c).GetCaller(pb.GetCallerRequest(),"
                " metadata=(('authorization', 'Bearer ' + sys.argv[2]),), timeout=5).scopes))",
                f"127.0.0.1:{grpc_port}",
                token,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.split() == ["1", "profiles:read"]  # SERVING; the key's scopes
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert (
            'keel_grpc_requests_total{code="OK",method="/keel.profiles.v1.CallerService/GetCaller"} 1.0'
            in metrics.text
        )
    finally:
        process.terminate()
        process.wait(timeout=15)
