"""SQLite's one writer, as callers see it: a writer held past KEEL_DB_ACQUIRE_TIMEOUT_SECONDS is a
503 with Retry-After (REST), UNAVAILABLE with retryAfter (GraphQL), UNAVAILABLE with RetryInfo
(gRPC), never a 500; a request cancelled while its `BEGIN IMMEDIATE` waits leaves neither the
lock nor a transaction behind."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from keel.api.grpc.server import GrpcServer
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.config import Settings
from tests.e2e.conftest import Api, make_api

PROTOCOLS = ["rest", "graphql", "grpc"]
CREATE = "mutation C($input: CreateProfileInput!) { createProfile(input: $input) { profile { id } } }"


def document(n: int) -> dict[str, Any]:
    return {"handle": f"writer_{n}", "emails": [{"address": f"w{n}@example.com", "primary": True}]}


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[Api]:
    # The writer's wait is short so the refusal comes at once; the unit of work's own deadline
    # (db_timeout_seconds, 2 s) is longer, so it is the writer's timeout that answers.
    built, deployment = await make_api(Settings(database_url=sqlite_url, db_acquire_timeout_seconds=0.05))
    async with built.client:
        yield built
    await deployment.close()


async def create_over(api: Api, protocol: str, n: int) -> tuple[str, dict[str, Any]]:
    """A create over `protocol`: ("created" | "unavailable", what the client saw)."""
    if protocol == "rest":
        response = await api.client.post("/v1/profiles", json=document(n), headers=api.writer)
        assert response.status_code != 500, response.text
        if response.status_code == 201:
            return "created", response.json()
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["Retry-After"]) >= 1
        return "unavailable", response.json()
    if protocol == "graphql":
        response = await api.client.post(
            "/graphql", json={"query": CREATE, "variables": {"input": document(n)}}, headers=api.writer
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if "errors" not in body:
            return "created", body
        assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAVAILABLE"], body
        assert body["errors"][0]["extensions"]["retryAfter"] >= 1
        return "unavailable", body
    server = GrpcServer(api.keel, api.keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            doc = document(n)
            request = pb.CreateProfileRequest(
                profile=pb.Profile(handle=doc["handle"], emails=[pb.Email(**doc["emails"][0])])
            )
            metadata = (("authorization", api.writer["Authorization"]),)
            failure: grpc.aio.AioRpcError | None = None
            try:
                reply = await stub.CreateProfile(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as error:
                failure = error
    finally:
        await server.stop(grace_seconds=0)
    if failure is None:
        return "created", {"id": reply.profile.id}
    assert failure.code() is grpc.StatusCode.UNAVAILABLE, failure
    trailers = dict(failure.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    assert retry.retry_delay.seconds >= 1
    return "unavailable", {"message": failure.details()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_writer_held_past_the_acquire_timeout_is_a_503_then_writes_resume(
    api: Api, protocol: str
) -> None:
    # Another writer of this process holds SQLite's writer for as long as the request takes:
    # nothing but the acquire timeout can answer it.
    async with api.keel.local.store.unit_of_work():
        outcome, seen = await create_over(api, protocol, 1)
    assert outcome == "unavailable", seen
    outcome, seen = await create_over(api, protocol, 2)
    assert outcome == "created", seen


def in_use(api: Api) -> float | None:
    value: float | None = api.keel.metrics.registry.get_sample_value("keel_db_pool_connections_in_use")
    return value


def http_requests(api: Api, route: str, status: int) -> float | None:
    value: float | None = api.keel.metrics.registry.get_sample_value(
        "keel_http_requests_total", {"method": "POST", "route": route, "status": str(status)}
    )
    return value


async def until(condition: Callable[[], bool], polls: int = 10_000) -> bool:
    """Whether `condition` came true within `polls` turns of the event loop (bounded by count)."""
    for _ in range(polls):
        if condition():
            return True
        await asyncio.sleep(0.001)
    return condition()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_request_cancelled_during_begin_leaves_no_lock_and_no_transaction(
    api: Api, sqlite_url: str, protocol: str
) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    # Another process's writer, as far as SQLite can tell: Keel's `BEGIN IMMEDIATE` waits on it
    # (busy_timeout) once Keel's own lock is taken.
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    server = GrpcServer(api.keel, api.keel.local.authenticator, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        if protocol == "rest":
            call: Any = api.client.post("/v1/profiles", json=document(1), headers=api.writer)
        elif protocol == "graphql":
            payload = {"query": CREATE, "variables": {"input": document(1)}}
            call = api.client.post("/graphql", json=payload, headers=api.writer)
        else:
            doc = document(1)
            call = pb_grpc.ProfileServiceStub(channel).CreateProfile(
                pb.CreateProfileRequest(
                    profile=pb.Profile(handle=doc["handle"], emails=[pb.Email(**doc["emails"][0])])
                ),
                metadata=(("authorization", api.writer["Authorization"]),),
                timeout=30,
            )
        request = asyncio.ensure_future(call)
        try:
            # The request takes the in-process lock, then waits in BEGIN.
            assert await until(lambda: in_use(api) == 1.0), "the request never reached BEGIN"
            assert not request.done()
            request.cancel()  # for gRPC: the client cancels the call, the server its handler
        finally:
            other.execute("ROLLBACK")  # the BEGIN that Keel sent now runs on aiosqlite's thread
        with pytest.raises(asyncio.CancelledError):
            await request
        assert await until(lambda: in_use(api) == 0.0), "the writer's lock is still held"
    finally:
        await channel.close()
        await server.stop(grace_seconds=0)
    # No transaction left open on Keel's writer: another connection gets the write lock at once.
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    outcome, seen = await create_over(api, protocol, 2)
    assert outcome == "created", seen
    listed = await api.client.get("/v1/profiles", headers=api.reader)
    assert [p["handle"] for p in listed.json()["items"]] == ["writer_2"]
    if protocol != "grpc":
        # A request its caller gave up on is no server error: 499, as nginx logs it, never 500.
        route = "/v1/profiles" if protocol == "rest" else "/graphql"
        assert http_requests(api, route, 500) is None
        assert http_requests(api, route, 499) == 1.0
