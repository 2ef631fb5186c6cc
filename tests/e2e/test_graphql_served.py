"""A real third-party GraphQL client (gql, over httpx) against `keel serve` in its own process
(SQLite or PostgreSQL; alone, or as a core behind an edge that is a second process):
schema introspection and local validation, queries, mutations with an Idempotency-Key, typed
errors, and automatic persisted queries as Apollo's link does them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest, gql
from gql.client import AsyncClientSession
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from graphql import ExecutionResult
from testkit.health import wait_healthy
from testkit.ports import free_port

from tests.e2e.conftest import MODES
from tests.e2e.test_served_process import _keel
from tests.integration.test_key_verifier_migration import _fresh_postgres_database


@dataclass
class Served:
    url: str
    base_url: str
    token: str


COMBINATIONS = [(database, mode) for database in ("sqlite", "postgres") for mode in MODES]


def _database_url(database: str, mode: str, directory: Path, request: pytest.FixtureRequest) -> str:
    if database == "sqlite":
        return f"sqlite:///{directory / 'keel.sqlite3'}"
    # A database of its own on the session's server: the processes outlive any one test.
    server_url: str = request.getfixturevalue("postgres_url")
    return asyncio.run(_fresh_postgres_database(server_url, f"keel_graphql_served_{mode}"))


def _start(
    env: dict[str, str], name: str, directory: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    log_path = directory / f"{name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "keel", "serve", *args], env=env, stdout=log, stderr=log
        )
    base_url = f"http://127.0.0.1:{env['KEEL_PORT']}"
    try:
        wait_healthy(base_url, process, log_path)
    except BaseException:
        process.terminate()
        process.wait(timeout=15)
        raise
    return process, base_url


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def served(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Served]:
    """`keel serve` on SQLite or PostgreSQL, alone (monolith) or as the core behind a second
    `keel serve --core` (edge), which the client then talks to."""
    database, mode = request.param
    directory = tmp_path_factory.mktemp("graphql-served")
    grpc_port = free_port()
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": _database_url(database, mode, directory, request),
        "KEEL_PORT": str(free_port()),
    }
    if mode == "edge":
        env["KEEL_GRPC_PORT"] = str(grpc_port)
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").strip()
    processes = []
    try:
        process, base_url = _start(env, "core" if mode == "edge" else "keel", directory)
        processes.append(process)
        if mode == "edge":
            edge_token = _keel(env, "keys", "create", "--scopes", "edge", "--name", "edge", "--quiet").strip()
            edge_env = {
                **{k: v for k, v in env.items() if k != "KEEL_GRPC_PORT"},
                "KEEL_PORT": str(free_port()),
                "KEEL_CORE_API_KEY": edge_token,
            }
            process, base_url = _start(edge_env, "edge", directory, "--core", f"grpc://127.0.0.1:{grpc_port}")
            processes.append(process)
        yield Served(f"{base_url}/graphql", base_url, token)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)


def client(served: Served) -> Client:
    transport = HTTPXAsyncTransport(url=served.url, headers={"Authorization": f"Bearer {served.token}"})
    # The client fetches the schema by introspection and validates every document against it
    # before sending it.
    return Client(transport=transport, fetch_schema_from_transport=True)


class PersistedQueryRequest(GraphQLRequest):
    """Apollo's persisted-query link, for gql: the hash of the printed query, with or without
    the query itself."""

    def __init__(self, request: GraphQLRequest, *, with_query: bool) -> None:
        super().__init__(request)
        self.with_query = with_query

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = super().payload
        sha256 = hashlib.sha256(payload["query"].encode()).hexdigest()
        payload["extensions"] = {"persistedQuery": {"version": 1, "sha256Hash": sha256}}
        if not self.with_query:
            del payload["query"]
        return payload


async def execute_persisted(
    session: AsyncClientSession, request: GraphQLRequest
) -> tuple[ExecutionResult, bool]:
    """The result, and whether the server had to be sent the query."""
    hashed = PersistedQueryRequest(request, with_query=False)
    try:
        return await session.execute(hashed, get_execution_result=True), False
    except TransportQueryError as error:
        unknown = error.errors or []
    if [e["extensions"]["code"] for e in unknown] != ["PERSISTED_QUERY_NOT_FOUND"]:
        raise AssertionError(f"expected PersistedQueryNotFound, got {unknown}")
    assert unknown[0]["message"] == "PersistedQueryNotFound"
    full = PersistedQueryRequest(request, with_query=True)
    return await session.execute(full, get_execution_result=True), True


CREATE = gql(
    """mutation Create($input: CreateProfileInput!) {
      createProfile(input: $input) { replayed profile { id handle version emails { address } } }
    }"""
)
READ = gql(
    """query Read($id: ID!, $handle: String!) {
      profile(id: $id) { handle links { kind url } }
      profileByHandle(handle: $handle) { id }
      profiles(first: 10) { edges { node { id } } pageInfo { hasNextPage } totalCount }
      viewer { scopes }
    }"""
)
UPDATE = gql(
    """mutation Update($id: ID!, $version: Int) {
      updateProfile(id: $id, patch: {displayName: "Grace H."}, expectedVersion: $version) { version }
    }"""
)


async def test_gql_client_runs_queries_and_mutations(served: Served) -> None:
    async with client(served) as session:
        CREATE.variable_values = {
            "input": {
                "handle": "grace_h",
                "emails": [{"address": "grace@example.com", "primary": True}],
                "links": [{"kind": "site", "url": "https://grace.dev"}],
            }
        }
        retry = {"headers": {"Idempotency-Key": "create-grace"}}
        first = await session.execute(CREATE, extra_args=retry)
        again = await session.execute(CREATE, extra_args=retry)
        created = first["createProfile"]["profile"]
        assert first["createProfile"]["replayed"] is False
        assert again["createProfile"] == {"replayed": True, "profile": created}

        READ.variable_values = {"id": created["id"], "handle": "grace_h"}
        result = await session.execute(READ, get_execution_result=True)
        assert result.data == {
            "profile": {"handle": "grace_h", "links": [{"kind": "site", "url": "https://grace.dev"}]},
            "profileByHandle": {"id": created["id"]},
            "profiles": {
                "edges": [{"node": {"id": created["id"]}}],
                "pageInfo": {"hasNextPage": False},
                "totalCount": 1,
            },
            "viewer": {"scopes": ["profiles:read", "profiles:write"]},
        }
        assert result.extensions is not None
        assert result.extensions["cost"]["requested"] == 1 + 10 + 10  # get + search by handle + list

        UPDATE.variable_values = {"id": created["id"], "version": 1}
        assert await session.execute(UPDATE) == {"updateProfile": {"version": 2}}
        with pytest.raises(TransportQueryError) as refused:
            await session.execute(UPDATE)
        assert refused.value.errors is not None
        assert refused.value.errors[0]["extensions"]["code"] == "VERSION_MISMATCH"
        assert "Traceback" not in str(refused.value.errors)


async def test_gql_client_with_automatic_persisted_queries(served: Served) -> None:
    query = gql("query Viewer { viewer { keyId scopes } }")
    async with client(served) as session:
        first, sent_query = await execute_persisted(session, query)
        assert sent_query is True  # unknown hash: PersistedQueryNotFound, then the full query
        second, sent_query = await execute_persisted(session, query)
        assert sent_query is False  # known now: the hash alone
        assert first.data == second.data
        assert first.data is not None
        assert first.data["viewer"]["scopes"] == ["profiles:read", "profiles:write"]
    async with httpx.AsyncClient() as http:
        exposition = (await http.get(f"{served.base_url}/metrics")).text
    assert 'keel_graphql_persisted_queries_total{outcome="hit"} 1.0' in exposition
    assert 'keel_graphql_operations_total{operation="Viewer",outcome="ok",type="query"}' in exposition
    assert 'keel_graphql_operation_duration_seconds_count{operation="Create"}' in exposition
