"""`KEEL_ENVIRONMENT=production`, the one switch that closes what answers without a key and
describes or measures the service: API documentation, /metrics on the API port, GraphiQL,
GraphQL introspection and gRPC reflection (security finding 14). Development keeps them open;
a setting given one by one still wins; metrics move to the management port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from pydantic import SecretStr
from testkit.health import wait_healthy
from testkit.ports import free_port

from keel.api.grpc.server import GrpcServer
from keel.bootstrap.lifecycle import build_services
from keel.config import CLOSED_IN_PRODUCTION, Settings
from tests.e2e.conftest import Api, make_api
from tests.e2e.test_served_process import _keel

VERSION = "2026-11-28"
SECRET = SecretStr("a-test-cursor-secret-of-32-characters")
INTROSPECTION = "{ __schema { queryType { name } } }"
CLOSED_PATHS = (
    "/docs",
    f"/docs?version={VERSION}",
    "/redoc",
    f"/openapi.json?version={VERSION}",
    "/metrics",
    "/assets/keel-1/swagger.js",
    "/assets/graphiql-3.8.3/graphiql.min.js",
)


def test_production_closes_everything_and_each_setting_still_wins() -> None:
    production = Settings(environment="production", cursor_secret=SECRET, webhook_secrets_key=SECRET)
    assert {name: getattr(production, name) for name in CLOSED_IN_PRODUCTION} == dict.fromkeys(
        CLOSED_IN_PRODUCTION, False
    )
    development = Settings()
    assert development.environment == "development"
    assert all(getattr(development, name) for name in CLOSED_IN_PRODUCTION)
    reopened = Settings(
        environment="production", cursor_secret=SECRET, webhook_secrets_key=SECRET, graphql_introspection=True
    )
    assert reopened.graphql_introspection is True
    assert reopened.api_docs is False


@pytest.fixture
async def production(sqlite_url: str) -> AsyncIterator[Api]:
    api, deployment = await make_api(
        Settings(
            database_url=sqlite_url,
            environment="production",
            cursor_secret=SECRET,
            webhook_secrets_key=SECRET,
        )
    )
    async with api.client:
        yield api
    await deployment.close()


@pytest.fixture
async def development(sqlite_url: str) -> AsyncIterator[Api]:
    api, deployment = await make_api(Settings(database_url=sqlite_url, environment="development"))
    async with api.client:
        yield api
    await deployment.close()


async def test_production_closes_docs_metrics_and_assets_but_keeps_probes(production: Api) -> None:
    for path in CLOSED_PATHS:
        closed = await production.client.get(path)
        assert closed.status_code == 404, path
        assert closed.headers["content-type"] == "application/problem+json", path
    for probe in ("/healthz", "/readyz"):
        assert (await production.client.get(probe)).status_code == 200
    # The API itself still answers.
    assert (await production.client.get("/v1/profiles", headers=production.reader)).status_code == 200


async def test_production_refuses_introspection_and_graphiql(production: Api) -> None:
    introspection = await production.client.post(
        "/graphql", json={"query": INTROSPECTION}, headers=production.reader
    )
    assert {e["extensions"]["code"] for e in introspection.json()["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}
    assert "data" not in introspection.json()
    page = await production.client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 400
    assert page.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    viewer = await production.client.post(
        "/graphql", json={"query": "{ viewer { keyId } }"}, headers=production.reader
    )
    assert viewer.json()["data"]["viewer"]["keyId"]


async def test_development_keeps_docs_metrics_introspection_and_graphiql(development: Api) -> None:
    docs = await development.client.get("/docs")
    assert docs.status_code == 200
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    openapi = await development.client.get("/openapi.json", params={"version": VERSION})
    assert "/v1/profiles" in openapi.json()["paths"]
    assert "keel_build_info" in (await development.client.get("/metrics")).text
    assert (await development.client.get("/redoc")).status_code == 404  # not served (see swagger.py)
    introspection = await development.client.post(
        "/graphql", json={"query": INTROSPECTION}, headers=development.reader
    )
    assert introspection.json()["data"] == {"__schema": {"queryType": {"name": "Query"}}}
    page = await development.client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_pages_load_nothing_from_another_origin_and_have_no_inline_script(development: Api) -> None:
    for path in ("/docs", "/graphql"):
        page = (await development.client.get(path, headers={"Accept": "text/html"})).text
        assert "://" not in page, path
        assert "<script>" not in page, path
        assert "<style" not in page, path
        assert " style=" not in page, path
        assets = re.findall(r'(?:src|href)="(assets/[^"]+)"', page)
        assert len(assets) >= 3, path
        for asset in assets:
            loaded = await development.client.get("/" + asset)
            assert loaded.status_code == 200, asset
            assert loaded.headers["content-type"].startswith(("text/javascript", "text/css")), asset


async def test_unknown_docs_version_is_a_problem(development: Api) -> None:
    unknown = await development.client.get("/docs", params={"version": "1999-01-01"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "2026-11-28" in unknown.json()["detail"]


# The reflection method asked through the channel itself, as its generated stub does: the stub's
# published types (types-grpcio-reflection) take no aio channel and leave the method untyped.
REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def _reflected_services(port: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reflect = channel.stream_stream(
            REFLECTION_METHOD,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        return sorted([s.name async for answer in call for s in answer.list_services_response.service])


@pytest.mark.parametrize("environment", ["production", "development"])
async def test_grpc_reflection_only_in_development(sqlite_url: str, environment: str) -> None:
    keel = await build_services(
        Settings(
            database_url=sqlite_url, environment=environment, cursor_secret=SECRET, webhook_secrets_key=SECRET
        )
    )
    server = GrpcServer(keel, keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    try:
        if environment == "production":
            # Asked as one unary call: a stream refused before its first message is sent can
            # surface as INTERNAL ("Failed execute_batch") on a loaded machine, which says nothing.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                ask = channel.unary_unary(
                    REFLECTION_METHOD,
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ask(reflection_pb2.ServerReflectionRequest(list_services=""), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
        else:
            assert "keel.profiles.v1.ProfileService" in await _reflected_services(server.port)
    finally:
        await server.stop(grace_seconds=0)
        await keel.close()


def test_served_production_process_moves_metrics_to_the_management_port(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_PORT": str(free_port()),
        "KEEL_GRPC_PORT": str(free_port()),
        "KEEL_ENVIRONMENT": "production",
        "KEEL_CURSOR_SECRET": SECRET.get_secret_value(),
        "KEEL_WEBHOOK_SECRETS_KEY": SECRET.get_secret_value(),
        "KEEL_MANAGEMENT_PORT": str(free_port()),
    }
    _keel(env, "migrate")
    log_path = tmp_path / "keel.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "keel", "serve"], env=env, stdout=log, stderr=log)
    api = f"http://127.0.0.1:{env['KEEL_PORT']}"
    try:
        wait_healthy(api, process, log_path)
        assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200
        for path in ("/metrics", "/docs", f"/openapi.json?version={VERSION}"):
            assert httpx.get(f"{api}{path}", timeout=5).status_code == 404, path
        scraped = httpx.get(f"http://127.0.0.1:{env['KEEL_MANAGEMENT_PORT']}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert 'route="/healthz"' in scraped.text  # the API port's own traffic, measured
        # The probes too, for orchestrators on the private address.
        management = f"http://127.0.0.1:{env['KEEL_MANAGEMENT_PORT']}"
        alive = httpx.get(f"{management}/healthz", timeout=5)
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        ready = httpx.get(f"{management}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "migrations": "current"}
        assert httpx.get(f"{management}/docs", timeout=5).status_code == 404
        with grpc.insecure_channel(f"127.0.0.1:{env['KEEL_GRPC_PORT']}") as channel:
            reflect = channel.stream_stream(
                REFLECTION_METHOD,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
            assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_production_refuses_to_start_without_a_cursor_secret() -> None:
    with pytest.raises(ValueError, match="KEEL_CURSOR_SECRET"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="at least 32"):
        Settings(cursor_secret=SecretStr("short"))


def test_production_refuses_to_start_without_a_webhook_secrets_key() -> None:
    with pytest.raises(ValueError, match="KEEL_WEBHOOK_SECRETS_KEY"):
        Settings(environment="production", cursor_secret=SECRET)
    with pytest.raises(ValueError, match="KEEL_WEBHOOK_SECRETS_KEY must have at least 32"):
        Settings(webhook_secrets_key=SecretStr("short"))
