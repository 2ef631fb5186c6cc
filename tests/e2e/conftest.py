from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeAlias

import grpc
import httpx
import pytest
from pydantic import SecretStr

from keel.api.application import build_http_app
from keel.api.grpc.server import GrpcServer
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.bootstrap.container import Services
from keel.bootstrap.lifecycle import build_services
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key
from tests.integration.conftest import truncate


@dataclass
class Api:
    client: httpx.AsyncClient
    keel: Services
    writer: dict[str, str]
    reader: dict[str, str]
    admin: dict[str, str]
    mode: str = "monolith"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Deployment:
    """Keel as a test runs it: one process (monolith), or an edge whose every operation goes to
    a core over a real gRPC connection on loopback. `core` owns the database either way."""

    serving: Services
    core: Services
    grpc: GrpcServer | None = None

    async def close(self) -> None:
        if self.serving is not self.core:
            await self.serving.close()
        if self.grpc is not None:
            await self.grpc.stop(grace_seconds=0)
        await self.core.close()


MODES = ["monolith", "edge"]


async def deploy(
    settings: Settings, mode: str = "monolith", *, resilience_clock: Callable[[], float] = time.monotonic
) -> Deployment:
    """`resilience_clock`: the monotonic clock both processes' breakers and retry budgets read."""
    core = await build_services(settings, resilience_clock=resilience_clock)
    if mode == "monolith":
        return Deployment(core, core)
    server = GrpcServer(core, core.local.authenticator, "127.0.0.1:0")
    await server.start()
    edge_key = await issue_api_key(
        core.local.store, core.local.clock, scopes=[Scope.EDGE], api_version="2026-11-28", name="edge"
    )
    edge_settings = settings.model_copy(
        update={"core_url": f"grpc://127.0.0.1:{server.port}", "core_api_key": SecretStr(edge_key.token)}
    )
    return Deployment(await build_services(edge_settings, resilience_clock=resilience_clock), core, server)


async def make_api(settings: Settings, mode: str = "monolith") -> tuple[Api, Deployment]:
    deployment = await deploy(settings, mode)
    app = build_http_app(deployment.serving.settings, deployment.serving.metrics)
    app.state.services = deployment.serving
    keel = deployment.core
    tokens = {}
    for name, scopes in {
        "writer": [Scope.PROFILES_READ, Scope.PROFILES_WRITE],
        "reader": [Scope.PROFILES_READ],
        "admin": [Scope.ADMIN],
    }.items():
        issued = await issue_api_key(
            keel.local.store, keel.local.clock, scopes=scopes, api_version="2026-11-28", name=name
        )
        tokens[name] = bearer(issued.token)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://keel.test")
    return Api(client, keel, tokens["writer"], tokens["reader"], tokens["admin"], mode), deployment


@pytest.fixture(params=MODES)
async def api(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """Keel's REST app in process, over a migrated empty database of each kind, as a monolith
    and as an edge in front of a core reached over gRPC."""
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    built, deployment = await make_api(Settings(database_url=database_url), request.param)
    async with built.client:
        yield built
    await deployment.close()


# A stub on an aio channel and the metadata that authenticates its calls. (A string: the async
# stub class exists only in the generated type stubs.)
GrpcClient: TypeAlias = "tuple[pb_grpc.ProfileServiceAsyncStub, tuple[tuple[str, str]]]"


@pytest.fixture
async def grpc_channel(api: Api) -> AsyncIterator[GrpcClient]:
    """A gRPC server over the core of `api` (only a core serves gRPC), and a stub to it with a
    read-and-write key."""
    server = GrpcServer(api.keel, api.keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    issued = await issue_api_key(
        api.keel.local.store,
        api.keel.local.clock,
        scopes=[Scope.PROFILES_READ, Scope.PROFILES_WRITE],
        api_version="2026-11-28",
        name="grpc",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.ProfileServiceStub(channel), (("authorization", f"Bearer {issued.token}"),)
    finally:
        await server.stop(grace_seconds=0)
