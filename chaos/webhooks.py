"""What the webhook deliveries of a run became, seen from the endpoints (chaos/webhook_receivers.py
records every request they received) and from the outbox (every event the database committed).

The figures the checks read (`Run.values`), all from this run:
- `webhook_undelivered`: (endpoint, event) pairs the endpoint wanted (its event types, committed
  after it was registered) that it never answered 2xx, once the run is over and its dead letters
  were replayed (the wait is bounded);
- `webhook_bad_signatures`: requests whose Standard Webhooks signature does not verify with the
  endpoint's secret, or whose body is not the event its `webhook-id` names;
- `webhook_retries_early`: retries of one delivery that came sooner after the attempt before
  than the schedule's shortest delay allows (the delay less its jitter, plus the attempt's
  timeout when the endpoint hung, less `EARLY_MARGIN_SECONDS` for the sender's connect);
- `webhook_retries_late`: on the endpoints listed as `on_time`, retries that came later than the
  delay plus its jitter, the dispatcher's poll interval and `LATE_MARGIN_SECONDS`;
- `webhook_retries_checked`: how many retries were timed;
- `webhook_excess_attempts`: attempts of one delivery beyond the schedule's count, before the
  replay;
- `webhook_dead_letters_min`: the fewest dead letters any broken endpoint had when they were
  replayed; `webhook_dead_letters_miscounted`: dead letters whose attempt count is not the
  schedule's; `webhook_replayed`: dead letters made pending again.
Deliveries to the endpoint named `healthy` are also added to the run as samples (operation
`webhook_healthy`, started when the event was committed, lasting until it arrived), so the
latency measures compare its delivery lag with and without the other endpoints' faults.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from subprocess import PIPE, Popen, TimeoutExpired
from typing import IO, Any

import asyncpg
import httpx
from testkit.ports import free_port

from chaos.traffic import Sample

EARLY_MARGIN_SECONDS = 0.1
LATE_MARGIN_SECONDS = 0.5
HEALTHY = "healthy"


@dataclass(frozen=True, slots=True)
class Received:
    endpoint: str
    at: float  # monotonic seconds
    wall: float
    event_id: str
    timestamp: str
    signature: str
    body: str
    answer: str  # "200", "500", "hang"


@dataclass(frozen=True, slots=True)
class Committed:
    event_id: str
    type: str
    wall: float  # the event's time, Unix seconds


@dataclass(frozen=True, slots=True)
class Schedule:
    delays: tuple[float, ...]
    jitter: float
    poll_seconds: float
    attempt_timeout_seconds: float

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1


@dataclass
class Registered:
    name: str
    id: str
    url: str
    secret: str
    event_types: tuple[str, ...]
    created_wall: float


@dataclass
class Receivers:
    """The receiver process and the endpoints registered with Keel for it."""

    process: Popen[bytes]
    out: Path
    ports: dict[str, int]
    endpoints: dict[str, Registered] = field(default_factory=dict)
    modes: list[tuple[float, str, str]] = field(default_factory=list)  # (when, endpoint, mode)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/hook"

    def set_mode(self, name: str, mode: str) -> None:
        """Blocks until the receiver confirms (call it from a thread)."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(f"mode {name} {mode}\n".encode())
        stdin.flush()
        answer = stdout.readline().decode().strip()
        if answer != "ok":
            raise RuntimeError(f"webhook receiver refused mode {name} {mode}: {answer!r}")
        self.modes.append((time.monotonic(), name, mode))

    def received(self) -> list[Received]:
        if not self.out.exists():
            return []
        return [Received(**_renamed(json.loads(line))) for line in self.out.read_text().splitlines() if line]


def _renamed(record: dict[str, Any]) -> dict[str, Any]:
    record["event_id"] = record.pop("id")
    return record


@contextmanager
def receiving(names: list[str], workdir: Path, started: list[int]) -> Iterator[Receivers]:
    from testkit.processes import REPO, start_session

    ports = {name: free_port() for name in names}
    out = workdir / "webhook-requests.jsonl"
    command = [sys.executable, "-m", "chaos.webhook_receivers", "--out", str(out)]
    command += [f"{name}={port}" for name, port in ports.items()]
    process = start_session(command, stdin=PIPE, stdout=PIPE, cwd=REPO)
    started.append(process.pid)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().decode().strip()
        if ready != "ready":
            raise RuntimeError(f"the webhook receivers did not start: {ready!r}")
        yield Receivers(process, out, ports)
    finally:
        stdin: IO[bytes] | None = process.stdin
        if stdin is not None and not stdin.closed:
            stdin.close()
        try:
            process.wait(5)
        except TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def register(client: httpx.AsyncClient, receivers: Receivers, config: dict[str, Any]) -> None:
    """Registers each configured endpoint (admin `client`), remembering its secret."""
    for name, endpoint in config["endpoints"].items():
        types = tuple(endpoint.get("event_types", ()))
        document = {
            "url": receivers.url(name),
            "event_types": list(types),
            "holds_personal_data": bool(endpoint.get("holds_personal_data", False)),
        }
        response = await client.post("/v1/webhooks", json=document)
        if response.status_code != 201:
            raise RuntimeError(f"registering the {name} endpoint: {response.status_code} {response.text}")
        body = response.json()
        created = datetime.fromisoformat(body["created_at"]).timestamp()
        receivers.endpoints[name] = Registered(name, body["id"], body["url"], body["secret"], types, created)


async def dead_letters(client: httpx.AsyncClient, endpoint_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhooks/{endpoint_id}/dead-letters", params={"limit": 1000})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def replay(client: httpx.AsyncClient, endpoint_id: str) -> int:
    response = await client.post(f"/v1/webhooks/{endpoint_id}/dead-letters/replay")
    response.raise_for_status()
    return int(response.json()["replayed"])


async def committed_events(database_url: str) -> list[Committed]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id, type, time FROM event_outbox ORDER BY seq")
    finally:
        await connection.close()
    return [Committed(str(r["id"]), str(r["type"]), r["time"].timestamp()) for r in rows]


def wanted(endpoint: Registered, events: list[Committed]) -> set[str]:
    return {
        e.event_id
        for e in events
        if (not endpoint.event_types or e.type in endpoint.event_types) and e.wall >= endpoint.created_wall
    }


def missing(
    endpoints: dict[str, Registered], events: list[Committed], received: list[Received]
) -> dict[str, set[str]]:
    """Per endpoint, the wanted events it never answered 2xx."""
    answered: dict[str, set[str]] = {}
    for r in received:
        if r.answer.startswith("2"):
            answered.setdefault(r.endpoint, set()).add(r.event_id)
    return {name: wanted(e, events) - answered.get(name, set()) for name, e in endpoints.items()}


def undelivered(
    endpoints: dict[str, Registered], events: list[Committed], received: list[Received]
) -> dict[str, int]:
    return {name: len(ids) for name, ids in missing(endpoints, events, received).items()}


async def delivery_states(database_url: str, endpoint_id: str, event_ids: set[str]) -> str:
    """What Keel's deliveries of these events say (state, attempts, last error), counted: why
    an endpoint is missing them."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT state, attempts, last_error, count(*) AS n FROM webhook_deliveries"
            " WHERE endpoint_id = $1 AND event_id = ANY($2::text[])"
            " GROUP BY state, attempts, last_error ORDER BY n DESC",
            endpoint_id,
            sorted(event_ids),
        )
    finally:
        await connection.close()
    found = sum(int(r["n"]) for r in rows)
    shown = ", ".join(f"{r['state']}/{r['attempts']}/{r['last_error']}: {r['n']}" for r in rows)
    return f"{shown or 'none'}; no delivery row: {len(event_ids) - found}"


def webhooks_missing(receivers: Receivers, events: list[Committed]) -> dict[str, set[str]]:
    return missing(receivers.endpoints, events, receivers.received())


async def wait_delivered(
    receivers: Receivers, database_url: str, timeout_seconds: float
) -> tuple[dict[str, int], float]:
    """Polls until every endpoint has every event it wanted (or the timeout): the count still
    missing per endpoint, and how long it took (`inf` if not within the timeout)."""
    started = time.monotonic()
    while True:
        missing = undelivered(receivers.endpoints, await committed_events(database_url), receivers.received())
        if not any(missing.values()):
            return missing, time.monotonic() - started
        if time.monotonic() - started >= timeout_seconds:
            return missing, math.inf
        await asyncio.sleep(0.5)


def signature_ok(secret: str, received: Received) -> bool:
    """Standard Webhooks, written here from the specification (not Keel's code): any `v1,` entry
    of the header is the base64 HMAC-SHA256 of "id.timestamp.body" keyed by the secret's bytes;
    and the body is the event the id names."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{received.event_id}.{received.timestamp}.{received.body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.partition(",")[2] for s in received.signature.split() if s.startswith("v1,")]
    try:
        same_event = json.loads(received.body).get("id") == received.event_id
    except ValueError:
        same_event = False
    return same_event and any(hmac.compare_digest(expected, s) for s in offered)


def schedule_figures(
    received: list[Received],
    schedule: Schedule,
    *,
    until: float,
    hung: dict[str, float],
    on_time: set[str],
) -> dict[str, float]:
    """Retry timing from the requests received before `until` (the replay): each delivery's
    consecutive attempts, per endpoint and event id. On an endpoint in `hung` (endpoint -> when
    its hang ended) an attempt received while it hung lasts its timeout before its delay starts;
    one received less than a timeout before the hang ended was ended by the endpoint closing it,
    not by the timeout, and the gap after it is not timed."""
    attempts: dict[tuple[str, str], list[float]] = {}
    for r in sorted(received, key=lambda r: r.at):
        if r.at < until:
            attempts.setdefault((r.endpoint, r.event_id), []).append(r.at)
    early = late = checked = excess = 0
    for (endpoint, _), times in attempts.items():
        excess += max(0, len(times) - schedule.attempts)
        for n, (before, after) in enumerate(itertools.pairwise(times)):
            if n >= len(schedule.delays):
                break
            delay = schedule.delays[n]
            spent = 0.0
            if endpoint in hung and before <= hung[endpoint]:
                spent = schedule.attempt_timeout_seconds
                if before > hung[endpoint] - spent:
                    continue  # ended by the endpoint closing it as its hang ended
            gap = after - before
            checked += 1
            if gap < spent + delay * (1 - schedule.jitter) - EARLY_MARGIN_SECONDS:
                early += 1
            if (
                endpoint in on_time
                and gap > spent + delay * (1 + schedule.jitter) + schedule.poll_seconds + LATE_MARGIN_SECONDS
            ):
                late += 1
    return {
        "webhook_retries_early": float(early),
        "webhook_retries_late": float(late),
        "webhook_retries_checked": float(checked),
        "webhook_excess_attempts": float(excess),
    }


def healthy_samples(received: list[Received]) -> list[Sample]:
    """The `healthy` endpoint's first receipt of each event, as a sample from the event's commit
    (its CloudEvent `time`, moved onto the monotonic clock) to its arrival."""
    samples = []
    seen: set[str] = set()
    for r in sorted(received, key=lambda r: r.at):
        if r.endpoint != HEALTHY or r.event_id in seen:
            continue
        seen.add(r.event_id)
        event_wall = datetime.fromisoformat(json.loads(r.body)["time"]).timestamp()
        lag = max(0.0, r.wall - event_wall)
        samples.append(Sample("webhook_healthy", r.at - lag, lag, int(r.answer) if r.answer.isdigit() else 0))
    return samples


def schedule_of(keel_env: dict[str, str]) -> Schedule:
    """The retry schedule an experiment gave Keel (it must state each setting: the checks time
    retries against them)."""
    return Schedule(
        tuple(float(d) for d in json.loads(keel_env["KEEL_WEBHOOK_RETRY_DELAYS_SECONDS"])),
        float(keel_env["KEEL_WEBHOOK_RETRY_JITTER"]),
        float(keel_env["KEEL_WEBHOOK_DISPATCHER_POLL_SECONDS"]),
        float(keel_env["KEEL_WEBHOOK_ATTEMPT_TIMEOUT_SECONDS"]),
    )


@dataclass
class Scenario:
    """An experiment's webhook endpoints: registered before the run, broken and mended by its
    method (target `webhooks`: `break` with {endpoint: mode}, `mend`, `replay`), and checked
    after it."""

    receivers: Receivers
    client: httpx.AsyncClient  # an admin's
    schedule: Schedule
    config: dict[str, Any]
    broken: dict[str, str] = field(default_factory=dict)  # endpoint -> the mode it was broken with
    mended_at: dict[str, float] = field(default_factory=dict)  # endpoint -> when it answered again
    replayed_at: float = math.inf

    async def act(self, action: str, args: dict[str, Any], values: dict[str, float]) -> None:
        if action == "break":
            for name, mode in args.items():
                await asyncio.to_thread(self.receivers.set_mode, name, str(mode))
                self.broken[name] = str(mode)
        elif action == "mend":
            for name in self.broken:
                await asyncio.to_thread(self.receivers.set_mode, name, "ok")
                self.mended_at[name] = time.monotonic()
        elif action == "replay":
            await self._replay(values)
        else:
            raise ValueError(f"unknown action {action!r} on webhooks")

    async def _replay(self, values: dict[str, float]) -> None:
        self.replayed_at = time.monotonic()
        fewest = math.inf
        miscounted = replayed = 0
        for name in self.broken:
            endpoint_id = self.receivers.endpoints[name].id
            dead = await dead_letters(self.client, endpoint_id)
            fewest = min(fewest, len(dead))
            miscounted += sum(1 for d in dead if d["attempts"] != self.schedule.attempts)
            replayed += await replay(self.client, endpoint_id)
        values["webhook_dead_letters_min"] = float(fewest)
        values["webhook_dead_letters_miscounted"] = float(miscounted)
        values["webhook_replayed"] = float(replayed)

    async def finish(self, database_url: str, values: dict[str, float], samples: list[Sample]) -> str:
        """After the run: waits for every wanted delivery, then the figures above."""
        timeout = float(self.config.get("delivered_timeout_seconds", 60))
        missing, seconds = await wait_delivered(self.receivers, database_url, timeout)
        received = self.receivers.received()
        values["webhook_undelivered"] = float(sum(missing.values()))
        values["webhook_all_delivered_seconds"] = seconds
        secrets = {name: e.secret for name, e in self.receivers.endpoints.items()}
        values["webhook_bad_signatures"] = float(
            sum(1 for r in received if not signature_ok(secrets[r.endpoint], r))
        )
        hung = {
            name: self.mended_at.get(name, math.inf) for name, mode in self.broken.items() if mode == "hang"
        }
        on_time = set(self.config.get("on_time", ()))
        values.update(
            schedule_figures(received, self.schedule, until=self.replayed_at, hung=hung, on_time=on_time)
        )
        samples += healthy_samples(received)
        counts: dict[str, int] = {}
        for r in received:
            counts[r.endpoint] = counts.get(r.endpoint, 0) + 1
        shown = ", ".join(
            f"{name} {counts.get(name, 0)} requests, {missing[name]} undelivered" for name in secrets
        )
        if any(missing.values()):
            lost = webhooks_missing(self.receivers, await committed_events(database_url))
            for name, ids in lost.items():
                if ids:
                    states = await delivery_states(database_url, self.receivers.endpoints[name].id, ids)
                    shown += f"; {name}'s undelivered by state/attempts/last error: {states}"
        return f"webhooks: {shown}; all delivered {seconds:.2f} s after the run" + "".join(
            f"; {key.removeprefix('webhook_').replace('_', ' ')} {values[key]:g}"
            for key in sorted(values)
            if key.startswith("webhook_")
            and key not in ("webhook_undelivered", "webhook_all_delivered_seconds")
        )
