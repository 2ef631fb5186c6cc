"""A write/read workload against a running Keel that records what its clients saw.

`run_workload` runs `clients` concurrent clients; each does one operation at a time (create,
update, read or delete, drawn from `mix` by a seeded random) and records it in a `History`
(`testkit/history.py`), whose checker `check` then compares it with the rows that
`final_state` reads straight from the database. The operations have the shapes the checker
relies on: every create carries `attributes.op = <its key>` and an Idempotency-Key, every
update adds one attribute `u_<its key>`.

How an answer is classified (see `classify_response` and `classify_error`):

- 2xx: ok.
- 409 `idempotency-in-progress`, 408, any 5xx, a timeout, a connection reset or any other
  transport error once the request may have been sent: unknown (recorded `info`).
- The connection could not even be opened (refused, connect timeout, no pooled connection
  free), or 429: refused before anything was processed, so definitely not applied (`fail`),
  but the condition passes by itself ("transient").
- Any other 4xx (400, 404, 409 conflict or concurrent-modification, 412, 422, …): definite
  failure (`fail`).

Creates are retried with the same key and body, with capped exponential backoff and full
jitter, while their outcome is unknown or transient, until `duration_s + create_grace_s` has
passed. A transient refusal of a retry says nothing about an earlier attempt, so a create ends
`fail` only if every attempt definitely did nothing, and `info` if it gives up after an unknown
attempt. Updates, reads and deletes are never retried (`info` after an unknown outcome): a blind
retry of an update could apply it twice, which is what the checker looks for.

Run by hand against a server: ``python -m testkit.workload --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import httpx

from keel.service.consistency import TOKEN_NAME, format_position, parse_position
from testkit.history import OP_FS, OUTCOMES, FinalProfile, History, Invocation, OpF, Outcome, check
from testkit.percentile import percentile

DEFAULT_MIX: Mapping[str, float] = MappingProxyType(
    {"create": 0.2, "update": 0.4, "read": 0.37, "delete": 0.03}
)
MERGE_PATCH = "application/merge-patch+json"
IDEMPOTENCY_IN_PROGRESS = "urn:keel:problem:idempotency-in-progress"
# Keel allows 50 attributes without a schema: `op` plus at most 49 `u_*`. A margin keeps
# updates from failing on the limit instead of exercising the database.
MAX_UPDATES_PER_PROFILE = 45
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
RETRY_AFTER_CAP_S = 2.0
# After a failed or unknown operation a client pauses a little, so that an outage is not
# recorded as thousands of identical refusals.
PAUSE_AFTER_TROUBLE_S = 0.1

Verdict = Literal["ok", "fail", "unknown"]


@dataclass(frozen=True, slots=True)
class Classified:
    """What one HTTP attempt tells about the operation it carried."""

    verdict: Verdict
    # True when this attempt was refused before it could change anything and a retry may
    # succeed (connection refused, 429): definite for this attempt, not for earlier ones.
    transient: bool = False
    retry_after_s: float | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def classify_response(response: httpx.Response) -> Classified:
    status = response.status_code
    retry_after = _retry_after(response)
    detail: dict[str, Any] = {"status": status}
    problem = _problem_type(response)
    if problem is not None:
        detail["problem"] = problem
    if 200 <= status < 300:
        return Classified("ok", detail=detail)
    if status == 409 and problem == IDEMPOTENCY_IN_PROGRESS:
        # The first attempt is still running (or its lease has yet to run out): it may apply.
        return Classified("unknown", retry_after_s=retry_after, detail=detail)
    if status == 429:
        # The rate limiter answers before any handler runs: nothing was applied.
        return Classified("fail", transient=True, retry_after_s=retry_after, detail=detail)
    if status == 408 or not 400 <= status < 500:
        # 408: the server gave up reading the request, maybe not before acting on part of it.
        # 5xx (and anything unexpected): a crash, an unavailable database, shed load.
        return Classified("unknown", retry_after_s=retry_after, detail=detail)
    return Classified("fail", detail=detail)


def classify_error(error: BaseException) -> Classified:
    detail = {"error": type(error).__name__}
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        # No connection, so not a byte of the request left this process.
        return Classified("fail", transient=True, detail={**detail, "sent": False})
    if isinstance(error, TimeoutError | httpx.RequestError):
        return Classified("unknown", detail=detail)
    raise error


def _problem_type(response: httpx.Response) -> str | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        problem = response.json()
    except ValueError:
        return None
    kind = problem.get("type") if isinstance(problem, dict) else None
    return kind if isinstance(kind, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Reply:
    """A success, read: its body (a profile document, `{}` for a 204) and its headers."""

    document: dict[str, Any]
    headers: httpx.Headers


def _document(response: httpx.Response) -> dict[str, Any] | None:
    """The body of a success: a profile with an integer version, `{}` for a 204, else None."""
    if response.status_code == 204:
        return {}
    try:
        document = response.json()
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("version"), int):
        return None
    return document


def is_stale(headers: httpx.Headers) -> bool:
    """Keel marks a profile served from its cache past freshness (database away) `ttl=-…`."""
    return "ttl=-" in headers.get("cache-status", "")


@dataclass
class WorkloadStats:
    duration_s: float
    ops: dict[str, dict[str, int]]
    # f -> outcome -> {"count", "p50", "p90", "p99", "max"} in milliseconds, per logical
    # operation (a create's retries included).
    latency_ms: dict[str, dict[str, dict[str, float]]]
    create_attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "ops": self.ops,
            "latency_ms": self.latency_ms,
            "create_attempts": self.create_attempts,
        }

    def summary(self) -> str:
        lines = [f"workload: {self.duration_s:.1f} s, {self.create_attempts} create attempts"]
        for f, by_outcome in self.ops.items():
            counts = "  ".join(f"{outcome} {n:>6}" for outcome, n in by_outcome.items())
            ok = self.latency_ms.get(f, {}).get("ok")
            latency = f"  ok p50 {ok['p50']:.1f} ms p99 {ok['p99']:.1f} ms" if ok else ""
            lines.append(f"  {f:<7} {counts}{latency}")
        return "\n".join(lines)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles of a non-empty list of samples."""
    return {
        "count": len(samples),
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "max": max(samples),
    }


@dataclass
class _Run:
    client: httpx.AsyncClient
    history: History
    run_id: str
    request_timeout_s: float
    stop_at: float  # monotonic: no operation starts after this
    create_deadline: float  # monotonic: creates stop retrying after this
    read_ids: list[str]
    creates: bool  # whether the mix has creates at all
    created: list[str] = field(default_factory=list)
    updatable: list[str] = field(default_factory=list)
    updates_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    create_attempts: int = 0
    sequence: int = 0
    max_operations: int | None = None
    operations: int = 0
    # Read-your-writes across replicas: the newest consistency token any client got, sent on
    # every request (None: tokens off). One for all clients, as an app passes it along.
    consistency: int | None = None
    consistency_tokens: bool = False

    def next_key(self, process: int) -> str:
        self.sequence += 1
        return f"w{self.run_id}-{process}-{self.sequence}"

    async def send(self, method: str, path: str, **kwargs: Any) -> tuple[Classified, _Reply | None]:
        if self.consistency_tokens and self.consistency is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), TOKEN_NAME: format_position(self.consistency)}
        try:
            # A hard cap over the whole exchange: httpx's timeouts are per phase.
            async with asyncio.timeout(self.request_timeout_s):
                response = await self.client.request(method, path, **kwargs)
        except (TimeoutError, httpx.RequestError) as error:
            return classify_error(error), None
        answered = response.headers.get(TOKEN_NAME)
        if self.consistency_tokens and answered is not None:
            position = parse_position(answered)
            self.consistency = position if self.consistency is None else max(self.consistency, position)
        classified = classify_response(response)
        if classified.verdict != "ok":
            return classified, None
        document = _document(response)
        if document is None:
            # A success whose body cannot be read tells nothing about what was stored.
            return Classified("unknown", detail={**classified.detail, "error": "unreadable body"}), None
        return classified, _Reply(document, response.headers)

    def finish(
        self,
        invocation: Invocation,
        outcome: Outcome,
        *,
        profile: str | None = None,
        value: Mapping[str, Any] | None = None,
    ) -> None:
        op = self.history.complete(invocation, outcome, profile=profile, value=value)
        self.latencies[(op.f, outcome)].append((op.time - invocation.op.time) * 1000)

    def forget(self, profile_id: str) -> None:
        for targets in (self.created, self.updatable):
            if profile_id in targets:
                targets.remove(profile_id)


async def run_workload(
    base_url: str,
    token: str,
    *,
    clients: int = 4,
    duration_s: float = 10.0,
    seed: int = 0,
    mix: Mapping[str, float] = DEFAULT_MIX,
    request_timeout_s: float = 2.0,
    history: History,
    read_ids: Sequence[str] | None = None,
    create_grace_s: float = 10.0,
    run_id: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_operations: int | None = None,
    consistency_tokens: bool = False,
) -> WorkloadStats:
    """Run the workload; fills `history` and returns counts and latencies.

    `run_id` makes keys, handles and emails unique on a database that earlier runs used;
    a random one by default (the seed drives the choice of operations, not the names).

    A create in flight when Keel is killed leaves its Idempotency-Key reserved until Keel's
    lease (60 s) runs out, and its retries get 409 in-progress until then: a `create_grace_s`
    shorter than that ends such creates `info` (still checked for duplicates).

    `transport` replaces the network: an in-process system (the tests' deliberately lossy
    fake) goes through the same workload and checker as a real server. `max_operations` ends
    the run after that many operations (all clients together), bounding it by count.
    `consistency_tokens`: every request carries the newest `Keel-Consistency-Token` any client
    was answered (read-your-writes across read replicas, docs/replicas.md), recorded before
    the operation completes in the history, so a read begun after a write's completion reads
    at or past it."""
    weights = _weights(mix, has_read_ids=bool(read_ids))
    started = time.monotonic()
    timeout = httpx.Timeout(request_timeout_s, connect=request_timeout_s / 2)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
        limits=httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients),
        transport=transport,
    ) as client:
        run = _Run(
            client=client,
            history=history,
            run_id=run_id or secrets.token_hex(3),
            request_timeout_s=request_timeout_s,
            stop_at=started + duration_s,
            create_deadline=started + duration_s + create_grace_s,
            read_ids=list(read_ids or ()),
            creates=weights[OP_FS.index("create")] > 0,
            max_operations=max_operations,
            consistency_tokens=consistency_tokens,
        )
        await asyncio.gather(*(_client(run, process, seed, weights) for process in range(clients)))
    return _stats(run, time.monotonic() - started)


def _weights(mix: Mapping[str, float], *, has_read_ids: bool) -> list[float]:
    unknown = set(mix) - set(OP_FS)
    if unknown or any(weight < 0 for weight in mix.values()):
        raise ValueError(f"mix takes non-negative weights for {', '.join(OP_FS)}; got {dict(mix)}")
    weights = [float(mix.get(f, 0.0)) for f in OP_FS]
    if weights[OP_FS.index("create")] <= 0 and not (has_read_ids and weights[OP_FS.index("read")] > 0):
        raise ValueError("with no creates, reads of read_ids are the only possible operations")
    return weights


def _stats(run: _Run, duration_s: float) -> WorkloadStats:
    ops: dict[str, dict[str, int]] = {f: {outcome: 0 for outcome in OUTCOMES} for f in OP_FS}
    latency: dict[str, dict[str, dict[str, float]]] = {f: {} for f in OP_FS}
    for (f, outcome), samples in run.latencies.items():
        ops[f][outcome] = len(samples)
        latency[f][outcome] = percentiles(samples)
    return WorkloadStats(round(duration_s, 3), ops, latency, run.create_attempts)


async def _client(run: _Run, process: int, seed: int, weights: list[float]) -> None:
    rng = random.Random(seed * 1_000_003 + process)  # noqa: S311 - seeded workload randomness, not security
    while time.monotonic() < run.stop_at:
        if run.max_operations is not None:
            if run.operations >= run.max_operations:
                return
            run.operations += 1
        f: OpF = rng.choices(OP_FS, weights)[0]
        outcome = await _operation(run, process, rng, f)
        if outcome != "ok":
            await asyncio.sleep(rng.uniform(0, PAUSE_AFTER_TROUBLE_S))


async def _operation(run: _Run, process: int, rng: random.Random, f: OpF) -> Outcome:
    if f == "read" and (targets := run.created + run.read_ids):
        return await _read(run, process, rng.choice(targets))
    if f == "update" and run.updatable:
        return await _update(run, process, rng.choice(run.updatable))
    if f == "delete" and run.created:
        return await _delete(run, process, rng.choice(run.created))
    # Nothing to act on yet: make something, unless this run only reads what already exists.
    if run.creates or not run.read_ids:
        return await _create(run, process, rng)
    return await _read(run, process, rng.choice(run.read_ids))


async def _create(run: _Run, process: int, rng: random.Random) -> Outcome:
    key = run.next_key(process)
    handle = key.replace("-", "_")
    body = {
        "handle": handle,
        "emails": [{"address": f"{handle}@example.com", "primary": True}],
        "attributes": {"op": key},
    }
    invocation = run.history.invoke(process, "create", key, value={"handle": handle})
    maybe_applied = False
    attempt = 0
    while True:
        attempt += 1
        run.create_attempts += 1
        result, reply = await run.send("POST", "/v1/profiles", json=body, headers={"Idempotency-Key": key})
        if reply is not None:
            return _created(run, invocation, reply, attempt)
        maybe_applied = maybe_applied or result.verdict == "unknown"
        detail = {**result.detail, "attempts": attempt}
        if result.verdict == "fail" and not result.transient:
            run.finish(invocation, "fail", value=detail)
            return "fail"
        delay = _backoff(rng, attempt, result.retry_after_s)
        if time.monotonic() + delay > run.create_deadline:
            outcome: Outcome = "info" if maybe_applied else "fail"
            run.finish(invocation, outcome, value=detail)
            return outcome
        await asyncio.sleep(delay)


def _created(run: _Run, invocation: Invocation, reply: _Reply, attempts: int) -> Outcome:
    profile_id = str(reply.document["id"])
    value = {
        "version": reply.document["version"],
        "attempts": attempts,
        "replayed": reply.headers.get("idempotent-replayed") == "true",
    }
    run.finish(invocation, "ok", profile=profile_id, value=value)
    run.created.append(profile_id)
    run.updatable.append(profile_id)
    return "ok"


def _backoff(rng: random.Random, attempt: int, retry_after_s: float | None) -> float:
    """Full jitter over a capped exponential; never sooner than a (capped) Retry-After."""
    delay = rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay


async def _update(run: _Run, process: int, profile_id: str) -> Outcome:
    key = run.next_key(process)
    run.updates_sent[profile_id] += 1
    if run.updates_sent[profile_id] >= MAX_UPDATES_PER_PROFILE:
        run.updatable.remove(profile_id)
    invocation = run.history.invoke(process, "update", key, profile=profile_id)
    result, reply = await run.send(
        "PATCH",
        f"/v1/profiles/{profile_id}",
        content=json.dumps({"attributes": {f"u_{key}": True}}),
        headers={"Content-Type": MERGE_PATCH},
    )
    if reply is not None:
        run.finish(invocation, "ok", value={"version": reply.document["version"]})
        return "ok"
    return _not_ok(run, invocation, result)


async def _delete(run: _Run, process: int, profile_id: str) -> Outcome:
    invocation = run.history.invoke(process, "delete", run.next_key(process), profile=profile_id)
    result, reply = await run.send("DELETE", f"/v1/profiles/{profile_id}")
    if reply is not None:
        run.finish(invocation, "ok")
        run.forget(profile_id)
        return "ok"
    return _not_ok(run, invocation, result)


async def _read(run: _Run, process: int, profile_id: str) -> Outcome:
    invocation = run.history.invoke(process, "read", run.next_key(process), profile=profile_id)
    result, reply = await run.send("GET", f"/v1/profiles/{profile_id}")
    if reply is not None:
        value: dict[str, Any] = {"version": reply.document["version"], "stale": is_stale(reply.headers)}
        if (age := reply.headers.get("age", "")).isdigit():
            value["age"] = int(age)
        run.finish(invocation, "ok", value=value)
        return "ok"
    return _not_ok(run, invocation, result)


def _not_ok(run: _Run, invocation: Invocation, result: Classified) -> Outcome:
    outcome: Outcome = "info" if result.verdict == "unknown" else "fail"
    run.finish(invocation, outcome, value=result.detail)
    return outcome


async def final_state(database_url: str) -> dict[str, FinalProfile]:
    """Every profile row, soft-deleted ones included, read straight from the database: from the
    tables of the layout its `storage_layout` row says profiles are read from (docs/layouts.md;
    the normalized tables on a database from before that record)."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return await _postgres_rows(database_url)
    if database_url.startswith("sqlite:///"):
        return await asyncio.to_thread(_sqlite_rows, Path(database_url.removeprefix("sqlite:///")))
    raise ValueError("database_url must start with postgresql://, postgres:// or sqlite:///")


_ROWS_SQL = "SELECT id, version, deleted_at IS NOT NULL, {attributes} FROM profiles"
_DOCUMENT_ROWS_SQL = "SELECT id, version, deleted_at IS NOT NULL, {attributes} FROM profile_documents"
_LAYOUT_SQL = "SELECT read_layout FROM storage_layout WHERE name = 'profiles'"


def _row(profile_id: str, version: int, deleted: bool, attributes: str) -> FinalProfile:
    return FinalProfile(profile_id, int(version), bool(deleted), json.loads(attributes))


def _sqlite_rows(path: Path) -> dict[str, FinalProfile]:
    if not path.exists():  # sqlite3 would create an empty database and report no rows
        raise FileNotFoundError(path)
    connection = sqlite3.connect(path)
    try:
        try:
            [(layout,)] = connection.execute(_LAYOUT_SQL).fetchall()
        except sqlite3.OperationalError:  # no such table: before the layouts
            layout = "normalized"
        sql = (
            _DOCUMENT_ROWS_SQL.format(attributes="json_extract(document, '$.attributes')")
            if layout == "document"
            else _ROWS_SQL.format(attributes="attributes")
        )
        rows = connection.execute(sql).fetchall()
    finally:
        connection.close()
    return {row[0]: _row(*row) for row in rows}


async def _postgres_rows(database_url: str) -> dict[str, FinalProfile]:
    import asyncpg  # only where PostgreSQL is used

    connection = await asyncpg.connect(database_url)
    try:
        try:
            layout = await connection.fetchval(_LAYOUT_SQL)
        except asyncpg.UndefinedTableError:  # before the layouts
            layout = "normalized"
        sql = (
            _DOCUMENT_ROWS_SQL.format(attributes="(document->'attributes')::text")
            if layout == "document"
            else _ROWS_SQL.format(attributes="attributes::text")
        )
        rows = await connection.fetch(sql)
    finally:
        await connection.close()
    return {row[0]: _row(*row) for row in rows}


async def _main(arguments: argparse.Namespace) -> int:
    history = History()
    stats = await run_workload(
        arguments.base_url,
        arguments.token,
        clients=arguments.clients,
        duration_s=arguments.duration,
        seed=arguments.seed,
        request_timeout_s=arguments.timeout,
        history=history,
    )
    print(stats.summary())
    if arguments.history:
        history.save(arguments.history)
    if not arguments.database_url:
        return 0
    report = check(history, await final_state(arguments.database_url))
    print(report.summary())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the write/read workload against Keel and check it.")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("KEEL_TOKEN", ""), help="default: $KEEL_TOKEN")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=2.0, help="per request, seconds")
    parser.add_argument("--history", type=Path, help="save the history here (JSON Lines)")
    parser.add_argument(
        "--database-url", default=os.environ.get("KEEL_DATABASE_URL"), help="check against it afterwards"
    )
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
