"""Read replicas with read-your-writes, on a real primary and a real streaming replica
(`pg_basebackup`, testkit/servers/postgres.py): a core serving REST, GraphQL and gRPC, and an
edge in front of it. The replica's replay is paused (`pg_wal_replay_pause()`) to make it lag
as long as a test needs, so nothing here waits on timing: a read without a token is then
answered from the stale replica, and a read carrying the write's token from the primary."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import httpx
import pytest
from testkit.health import until
from testkit.history import History, check
from testkit.ports import free_port
from testkit.processes import keel_cmd, keel_output, server
from testkit.servers.postgres import PostgresProcess, postgres_process, postgres_replica
from testkit.workload import final_state, run_workload

from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.service.consistency import TOKEN_NAME, parse_position

TOKEN = TOKEN_NAME
CREATE_MUTATION = """mutation {
  createProfile(input: {handle: "ryw_graphql", emails: [{address: "g@example.com", primary: true}]}) {
    profile { id }
  }
}"""
_UNLIMITED = {"policies": [{"name": "burst", "quota": 1_000_000, "window_seconds": 1}], "concurrency": 10_000}


@dataclass
class Topology:
    primary: PostgresProcess
    replica: PostgresProcess
    core: str
    edge: str
    grpc_target: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def metric(self, name: str, label: str) -> float:
        """A sample of the core's /metrics, by its one label's value."""
        text = httpx.get(f"{self.core}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and f'="{label}"' in line:
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name}{{{label}}} is not in /metrics")

    def routed(self) -> tuple[float, float]:
        """Reads a replica could serve so far: (served by a replica, sent to the primary)."""
        name = "keel_replica_routed_reads_total"
        return self.metric(name, "replica"), self.metric(name, "primary")

    def on_replica(self, sql: str) -> None:
        async def run() -> None:
            connection = await asyncpg.connect(self.replica.url)
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        asyncio.run(run())


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    logs = tmp_path_factory.mktemp("replicas")
    with postgres_process() as primary, postgres_replica(primary) as replica:
        grpc_port, core_port, edge_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "KEEL_DATABASE_URL": primary.url,
            "KEEL_WORKERS": "1",
            "KEEL_RATELIMIT_PLANS": json.dumps({"standard": _UNLIMITED, "anonymous": _UNLIMITED}),
        }
        keel_output(env, "migrate")
        token = keel_output(env, "keys", "create", "--quiet").strip()
        edge_token = keel_output(
            env, "keys", "create", "--scopes", "edge", "--name", "edge", "--quiet"
        ).strip()
        core_env = {
            **env,
            "KEEL_PORT": str(core_port),
            "KEEL_GRPC_PORT": str(grpc_port),
            "KEEL_DATABASE_REPLICA_URLS": replica.url,
            # A paused replica stays eligible for reads without a token (the bound is tested on
            # the replica set itself, tests/unit/test_replica_set.py), and no cache: a
            # single read goes to the database, where a replica may serve it.
            "KEEL_REPLICA_MAX_LAG_SECONDS": "300",
            "KEEL_CACHE_ENABLED": "false",
        }
        edge_env = {**env, "KEEL_PORT": str(edge_port), "KEEL_CORE_API_KEY": edge_token}
        with (
            server("core", keel_cmd("serve"), core_env, logs / "core.log", core_port),
            server(
                "edge",
                keel_cmd("serve", "--core", f"grpc://127.0.0.1:{grpc_port}"),
                edge_env,
                logs / "edge.log",
                edge_port,
            ),
        ):
            nodes = Topology(
                primary,
                replica,
                f"http://127.0.0.1:{core_port}",
                f"http://127.0.0.1:{edge_port}",
                f"127.0.0.1:{grpc_port}",
                token,
            )
            until(lambda: nodes.metric("keel_replica_up", "replica-0") == 1, "the core found its replica")
            yield nodes


@pytest.fixture
def paused(topology: Topology) -> Iterator[Topology]:
    topology.on_replica("SELECT pg_wal_replay_pause()")
    try:
        yield topology
    finally:
        topology.on_replica("SELECT pg_wal_replay_resume()")


def _create(base: str, topology: Topology, handle: str) -> tuple[str, str]:
    created = httpx.post(
        f"{base}/v1/profiles",
        json={"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]},
        headers=topology.headers,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], created.headers[TOKEN]


@pytest.mark.parametrize("through", ["core", "edge"])
def test_a_read_carrying_the_writes_token_sees_it_while_the_replica_lags(
    paused: Topology, through: str
) -> None:
    base = paused.core if through == "core" else paused.edge
    profile_id, token = _create(base, paused, f"ryw_{through}")

    # Without the token the stale replica answers: the profile is not there yet. Polled: a read
    # goes to the primary while the node's copy of the layout record is not fresh (docs/replicas.md).
    def stale(path: str, **params: str) -> bool:
        answer = httpx.get(f"{base}{path}", params=params, headers=paused.headers, timeout=10)
        return answer.status_code == 404 or answer.json().get("items") == []

    until(lambda: stale(f"/v1/profiles/{profile_id}"), "a replica serves a read without the token")
    until(lambda: stale("/v1/profiles", handle=f"ryw_{through}"), "a replica serves a list without it")
    _, primary_before = paused.routed()

    # With it, the primary does (the replica has not replayed that far).
    with_token = {**paused.headers, TOKEN: token}
    read = httpx.get(f"{base}/v1/profiles/{profile_id}", headers=with_token, timeout=10)
    assert read.status_code == 200, read.text
    listed = httpx.get(f"{base}/v1/profiles", params={"handle": f"ryw_{through}"}, headers=with_token)
    assert [p["id"] for p in listed.json()["items"]] == [profile_id]
    assert paused.routed()[1] == primary_before + 2  # both on the primary


def test_a_write_after_a_token_answers_a_later_one(paused: Topology) -> None:
    profile_id, first = _create(paused.core, paused, "ryw_later")
    patched = httpx.patch(
        f"{paused.core}/v1/profiles/{profile_id}",
        json={"display_name": "Later"},
        headers={**paused.headers, "Content-Type": "application/merge-patch+json", TOKEN: first},
        timeout=10,
    )
    assert patched.status_code == 200, patched.text
    second = patched.headers[TOKEN]
    assert parse_position(second) > parse_position(first)
    read = httpx.get(f"{paused.core}/v1/profiles/{profile_id}", headers={**paused.headers, TOKEN: second})
    assert read.json()["display_name"] == "Later"


def test_graphql_answers_and_reads_by_the_token(paused: Topology) -> None:
    url = f"{paused.core}/graphql"
    created = httpx.post(
        url,
        json={"query": CREATE_MUTATION},
        headers=paused.headers,
        timeout=10,
    )
    assert created.status_code == 200, created.text
    assert "errors" not in created.json(), created.text
    profile_id = created.json()["data"]["createProfile"]["profile"]["id"]
    query = {"query": "query($id: ID!) { profile(id: $id) { id } }", "variables": {"id": profile_id}}
    until(
        lambda: (
            httpx.post(url, json=query, headers=paused.headers, timeout=10).json()["data"]["profile"] is None
        ),
        "a replica serves the query without the token",
    )
    fresh = httpx.post(url, json=query, headers={**paused.headers, TOKEN: created.headers[TOKEN]}).json()
    assert fresh["data"]["profile"] == {"id": profile_id}


def test_grpc_answers_the_token_in_trailing_metadata_and_reads_by_it(paused: Topology) -> None:
    async def calls() -> None:
        key = ("authorization", f"Bearer {paused.token}")
        async with grpc.aio.insecure_channel(paused.grpc_target) as channel:
            stub = pb_grpc.ProfileServiceStub(channel)
            call = stub.CreateProfile(
                pb.CreateProfileRequest(
                    profile=pb.Profile(
                        handle="ryw_grpc", emails=[pb.Email(address="ryw_grpc@example.com", primary=True)]
                    )
                ),
                metadata=(key,),
            )
            created = await call
            trailing = dict(await call.trailing_metadata() or ())
            token = trailing["keel-consistency-token"]
            read = await stub.GetProfile(
                pb.GetProfileRequest(id=created.profile.id), metadata=(key, ("keel-consistency-token", token))
            )
            assert read.profile.handle == "ryw_grpc"
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.GetProfile(
                    pb.GetProfileRequest(id=created.profile.id),
                    metadata=(key, ("keel-consistency-token", "not-a-token")),
                )
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(calls())


def test_a_malformed_token_is_a_400_problem(topology: Topology) -> None:
    for base in (topology.core, topology.edge):
        answer = httpx.get(f"{base}/v1/profiles", headers={**topology.headers, TOKEN: "12/zz"}, timeout=10)
        assert answer.status_code == 400
        assert answer.headers["content-type"] == "application/problem+json"
        assert TOKEN in answer.json()["detail"]


def test_lag_is_a_metric_and_a_caught_up_replica_serves_the_tokens_reads(topology: Topology) -> None:
    topology.on_replica("SELECT pg_wal_replay_pause()")
    try:
        profile_id, token = _create(topology.core, topology, "ryw_lag")
        until(lambda: topology.metric("keel_replica_lag_bytes", "replica-0") > 0, "the lag shows in bytes")
        until(
            lambda: topology.metric("keel_replica_lag_seconds", "replica-0") > 0, "the lag shows in seconds"
        )
    finally:
        topology.on_replica("SELECT pg_wal_replay_resume()")
    until(lambda: topology.metric("keel_replica_lag_bytes", "replica-0") == 0, "the replica catches up")

    def served_by_the_replica() -> bool:
        before, _ = topology.routed()
        read = httpx.get(
            f"{topology.core}/v1/profiles/{profile_id}", headers={**topology.headers, TOKEN: token}
        )
        assert read.status_code == 200, read.text
        return topology.routed()[0] == before + 1

    until(served_by_the_replica, "a replica that replayed past the token serves its reads")


def test_the_history_checker_finds_no_stale_read_through_a_replica(topology: Topology) -> None:
    """The failure-testing workload (4 clients) with and without tokens. Without, while the
    replica lags, the checker must find the stale reads (the check can fail); with tokens, it
    finds none, lagging or not."""

    def workload(*, tokens: bool) -> History:
        history = History()
        asyncio.run(
            run_workload(
                topology.core,
                topology.token,
                clients=4,
                duration_s=60,
                seed=7,
                history=history,
                max_operations=300,
                consistency_tokens=tokens,
            )
        )
        return history

    def verdict(history: History) -> set[str]:
        report = check(history, asyncio.run(final_state(topology.primary.url)))
        return report.kinds | {v.kind for v in report.realtime}

    replica_before, _ = topology.routed()
    assert verdict(workload(tokens=True)) == set()
    topology.on_replica("SELECT pg_wal_replay_pause()")
    try:
        assert verdict(workload(tokens=True)) == set()
        assert "missing-read" in verdict(workload(tokens=False))
    finally:
        topology.on_replica("SELECT pg_wal_replay_resume()")
    assert topology.routed()[0] > replica_before  # the replica did serve reads


def test_a_dead_replica_is_skipped_and_taken_back(topology: Topology) -> None:
    profile_id, _ = _create(topology.core, topology, "ryw_dead")
    until(lambda: topology.metric("keel_replica_lag_bytes", "replica-0") == 0, "the replica has the profile")
    topology.replica.stop()
    try:
        # At once, before or after the watcher notices: a read whose replica is gone (a pooled
        # connection to it broken, or a refused connect) is answered from the primary.
        url = f"{topology.core}/v1/profiles/{profile_id}"
        assert [httpx.get(url, headers=topology.headers, timeout=10).status_code for _ in range(3)] == [
            200
        ] * 3
        until(lambda: topology.metric("keel_replica_up", "replica-0") == 0, "the core sees the replica down")
        _, primary_before = topology.routed()
        for _ in range(5):
            read = httpx.get(
                f"{topology.core}/v1/profiles/{profile_id}", headers=topology.headers, timeout=10
            )
            assert read.status_code == 200, read.text
        assert topology.routed()[1] == primary_before + 5
    finally:
        topology.replica.start()
    until(lambda: topology.metric("keel_replica_up", "replica-0") == 1, "the core takes the replica back")


def test_after_the_layout_record_changes_a_replica_serves_only_once_past_the_change(paused: Topology) -> None:
    """A replica lagging across the end of a layout migration could read a layout it has not
    finished replaying: after any change of the record (here its generation, moved on the
    primary as a migration's last step moves it), replicas serve nothing until past it."""
    profile_id, _ = _create(paused.core, paused, "ryw_floor")
    url = f"{paused.core}/v1/profiles/{profile_id}"

    def status() -> int:
        return httpx.get(url, headers=paused.headers, timeout=10).status_code

    until(lambda: status() == 404, "the paused replica serves a read without a token")

    async def move_the_record_on() -> None:
        connection = await asyncpg.connect(paused.primary.url)
        try:
            await connection.execute("UPDATE storage_layout SET generation = generation + 1")
        finally:
            await connection.close()

    asyncio.run(move_the_record_on())
    until(lambda: status() == 200, "reads go to the primary once the node sees the new record")
    _, primary_before = paused.routed()
    assert status() == 200
    assert paused.routed()[1] == primary_before + 1
