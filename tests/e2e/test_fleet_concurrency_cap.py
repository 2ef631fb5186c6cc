"""The per-key concurrency cap across served processes: with Redis, two `keel serve` nodes
admit one key's cap between them (requests held in flight on one node refuse the key on the
other, over REST, GraphQL and gRPC), and a slot is back before its answer leaves (the next
request, sent after the answer, is admitted at once, more times than the cap: no protocol
leaks a slot; checked deterministically in process, at the answer's last bytes).
Without Redis, or with the fleet-wide count switched off (the controls), each node counts only
its own."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from starlette.types import Message
from testkit.health import until
from testkit.ports import free_port
from testkit.processes import keel_cmd, keel_output, server

from keel.api.application import build_http_app
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.ratelimit.redis import slots_key
from keel.service.auth import issue_api_key
from tests.e2e.conftest import deploy

CAP = 2
_ROOMY = [{"name": "burst", "quota": 1000, "window_seconds": 1, "burst": 1000}]
PLANS = {"standard": {"policies": _ROOMY, "concurrency": CAP}, "anonymous": {"policies": _ROOMY}}
WAIT = 60.0


@dataclass(frozen=True)
class Nodes:
    urls: list[str]
    token: str
    grpc: str  # the second node's gRPC address


@contextmanager
def _two_nodes(tmp_path: Path, redis_url: str | None, **extra: str) -> Iterator[Nodes]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "KEEL_REDIS_URL"},
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_WORKERS": "1",
        "KEEL_RATELIMIT_PLANS": json.dumps(PLANS),
        # Far longer than a test holds a request's body back.
        "KEEL_HTTP_BODY_TIMEOUT_SECONDS": "120",
        **({"KEEL_REDIS_URL": redis_url} if redis_url else {}),
        **extra,
    }
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    grpc_port = free_port()
    with contextlib.ExitStack() as stack:
        urls = []
        for n in range(2):
            port = free_port()
            node_env = {**env, "KEEL_PORT": str(port)}
            if n == 1:
                node_env["KEEL_GRPC_PORT"] = str(grpc_port)
            stack.enter_context(
                server(f"keel {n}", keel_cmd("serve"), node_env, tmp_path / f"keel-{n}.log", port)
            )
            urls.append(f"http://127.0.0.1:{port}")
        yield Nodes(urls, token, f"127.0.0.1:{grpc_port}")


# Lists profiles over gRPC `times` over, one call after another, in a process of its own (gRPC's
# client and this test process's forks do not mix); prints each call's status code.
_GRPC_LISTS = """
import sys, grpc
from keel.api.grpc.wire.v1 import profiles_pb2 as pb, profiles_pb2_grpc as rpc
stub = rpc.ProfileServiceStub(grpc.insecure_channel(sys.argv[1]))
codes = []
for _ in range(int(sys.argv[3])):
    try:
        stub.ListProfiles(
            pb.ListProfilesRequest(page_size=1),
            metadata=(("authorization", "Bearer " + sys.argv[2]),),
            timeout=10,
        )
        codes.append("OK")
    except grpc.RpcError as error:
        codes.append(error.code().name)
print(",".join(codes))
"""


def _grpc_lists(nodes: Nodes, times: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _GRPC_LISTS, nodes.grpc, nodes.token, str(times)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(",")


def _admitted(url: str) -> float:
    """The node's allowed rate-limit decisions so far, from its /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("keel_ratelimit_decisions_total{") and 'outcome="allowed"' in line:
            return float(line.split()[-1])
    return 0.0


class _HeldCreate:
    """A create whose headers and first body bytes are sent: admitted, and in flight until
    `finish` sends the rest."""

    def __init__(self, url: str, token: str, handle: str) -> None:
        body = json.dumps(
            {"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]}
        )
        self._rest = body[5:].encode()
        port = int(url.rsplit(":", 1)[1])
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        head = (
            f"POST /v1/profiles HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self._socket.sendall(head.encode() + body[:5].encode())

    def finish(self) -> bytes:
        self._socket.sendall(self._rest)
        answer = b""
        while chunk := self._socket.recv(65536):
            answer += chunk
        self._socket.close()
        return answer


def _list(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/profiles", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _hold_cap_on(url: str, token: str) -> list[_HeldCreate]:
    before = _admitted(url)
    held = [_HeldCreate(url, token, f"held_{n}") for n in range(CAP)]
    until(lambda: _admitted(url) >= before + CAP, "the held creates are admitted")
    return held


def _graphql(url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{url}/graphql",
        json={"query": "{ profiles(first: 1) { edges { node { id } } } }"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _graphql_refused_for_concurrency(response: httpx.Response) -> bool:
    [error] = response.json()["errors"]
    return (
        response.status_code == 429
        and error["extensions"]["code"] == "RATE_LIMITED"
        and error["extensions"]["violatedPolicies"] == ["concurrency"]
    )


def _refused_for_concurrency(response: httpx.Response) -> bool:
    return (
        response.status_code == 429
        and response.headers["retry-after"] == "1"
        and response.json()["violated_policies"] == ["concurrency"]
    )


def test_one_keys_cap_holds_across_nodes_sharing_redis(tmp_path: Path, redis_url: str) -> None:
    with _two_nodes(tmp_path, redis_url) as nodes:
        urls, token = nodes.urls, nodes.token
        held = _hold_cap_on(urls[0], token)
        refused = _list(urls[1], token)
        assert _refused_for_concurrency(refused), (refused.status_code, refused.text)
        assert _refused_for_concurrency(_list(urls[0], token))
        graphql = _graphql(urls[1], token)  # the same pipeline behind every protocol
        assert _graphql_refused_for_concurrency(graphql), graphql.text
        assert _grpc_lists(nodes, 1) == ["RESOURCE_EXHAUSTED"]
        for request in held:
            assert request.finish().startswith(b"HTTP/1.1 201")
        # Each slot went back before its answer left: no wait, no retry; and more requests one
        # after another than the cap, on every protocol, so that one slot leaked would show.
        for _ in range(CAP + 1):
            assert _list(urls[1], token).status_code == 200
            assert _list(urls[0], token).status_code == 200
            assert _graphql(urls[1], token).status_code == 200
        assert _grpc_lists(nodes, CAP + 1) == ["OK"] * (CAP + 1)


@pytest.mark.parametrize("shared", ["no redis", "redis, fleet concurrency off"])
def test_without_a_shared_count_each_node_counts_only_its_own(
    tmp_path: Path, shared: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if shared.startswith("redis") else None
    extra = {"KEEL_RATELIMIT_FLEET_CONCURRENCY": "false"} if redis_url else {}
    with _two_nodes(tmp_path, redis_url, **extra) as nodes:
        urls, token = nodes.urls, nodes.token
        held = _hold_cap_on(urls[0], token)
        assert _list(urls[1], token).status_code == 200
        assert _refused_for_concurrency(_list(urls[0], token))
        for create in held:
            assert create.finish().startswith(b"HTTP/1.1 201")


async def test_the_slot_is_back_before_the_answers_last_bytes(sqlite_url: str, redis_url: str) -> None:
    """Served for real, the next request cannot be sent before the answer has arrived; so the
    slot must be back on Redis when the answer's last bytes are handed to the server, not
    after (a client waiting for each answer would otherwise find its previous request still
    holding a slot). Checked at that moment, with the ASGI `send` itself."""
    deployment = await deploy(Settings(database_url=sqlite_url, redis_url=redis_url, ratelimit_plans=PLANS))
    redis = Redis.from_url(redis_url)
    try:
        serving = deployment.serving
        app = build_http_app(serving.settings, serving.metrics)
        app.state.services = serving
        issued = await issue_api_key(
            serving.local.store,
            serving.local.clock,
            scopes=[Scope.PROFILES_READ],
            api_version="2026-11-28",
            name="sequential",
        )
        slots = slots_key(f"key:{issued.key.id}")
        seen: list[tuple[str, int]] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.append((f"start {message['status']}", await redis.zcard(slots)))
            elif not message.get("more_body", False):
                seen.append(("last bytes", await redis.zcard(slots)))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/profiles",
            "raw_path": b"/v1/profiles",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"keel.test"), (b"authorization", f"Bearer {issued.token}".encode())],
            "client": ("198.51.100.7", 4000),
            "server": ("keel.test", 80),
            "state": {},
        }
        await app(scope, receive, send)
        # Held while the answer was being written (so the check below is not vacuous), back
        # before its last bytes.
        assert seen == [("start 200", 1), ("last bytes", 0)]
    finally:
        await redis.aclose()
        await deployment.close()
