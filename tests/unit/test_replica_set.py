"""Which replica may serve a read (`keel.storage.postgres.replicas`), on a virtual clock: the
watcher's positions are scripted, so the lag bound and the token rule are checked exactly. The
same code against a real primary and replica: tests/e2e/test_read_replicas.py."""

from __future__ import annotations

from typing import Any

import pytest

from keel.observability.metrics import Metrics
from keel.storage.postgres.replicas import PRIMARY_POSITION, REPLAYED_POSITION, Replica, Replicas


class Positions:
    """A pool that answers the watcher's one query with a position (or fails, or says null)."""

    def __init__(self, query: str, position: int | None) -> None:
        self.query = query
        self.position = position
        self.fails = False

    async def fetchval(self, sql: str) -> Any:
        assert sql == self.query
        if self.fails:
            raise OSError("connection refused")
        return self.position


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _set(clock: Clock, *positions: Positions, max_lag: float = 1.0) -> tuple[Replicas, Metrics]:
    metrics = Metrics()
    members = [Replica(f"replica-{n}", pool) for n, pool in enumerate(positions)]  # type: ignore[arg-type]
    return Replicas(members, metrics, max_lag_seconds=max_lag, clock=clock), metrics


def _gauge(metrics: Metrics, name: str, replica: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"replica": replica})


async def test_a_replica_serves_only_once_a_poll_finds_it_and_a_token_only_once_it_replayed_past() -> None:
    clock = Clock()
    primary = Positions(PRIMARY_POSITION, 1000)
    standby = Positions(REPLAYED_POSITION, 1000)
    replicas, metrics = _set(clock, standby)
    assert replicas.choose(None) is None  # never polled: not known to be a standby
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is replicas.members[0]
    assert replicas.choose(1000) is replicas.members[0]
    assert replicas.choose(1001) is None  # a write it has not replayed
    assert _gauge(metrics, "keel_replica_up", "replica-0") == 1


async def test_a_replica_behind_every_position_kept_or_not_polled_lately_serves_nothing() -> None:
    clock = Clock()
    primary = Positions(PRIMARY_POSITION, 5000)
    standby = Positions(REPLAYED_POSITION, 1000)  # behind the only sample at start-up
    replicas, metrics = _set(clock, standby, max_lag=1.0)
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is None
    assert _gauge(metrics, "keel_replica_lag_seconds", "replica-0") == -1  # not known
    standby.position = 5000
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is replicas.members[0]
    clock.now += 1.1  # no poll since (a stalled watcher): its lag is not known to be small
    assert replicas.choose(None) is None


async def test_lag_is_dated_from_the_oldest_position_not_replayed_and_bounds_tokenless_reads() -> None:
    clock = Clock()
    primary = Positions(PRIMARY_POSITION, 1000)
    standby = Positions(REPLAYED_POSITION, 1000)
    replicas, metrics = _set(clock, standby, max_lag=1.0)
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert _gauge(metrics, "keel_replica_lag_seconds", "replica-0") == 0
    primary.position = 5000  # the primary moves on at t=100.5; the replica stays at 1000
    clock.now = 100.5
    await replicas.poll(primary)  # type: ignore[arg-type]
    clock.now = 101.4
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert _gauge(metrics, "keel_replica_lag_seconds", "replica-0") == pytest.approx(0.9)
    assert _gauge(metrics, "keel_replica_lag_bytes", "replica-0") == 4000
    assert replicas.choose(None) is replicas.members[0]
    clock.now = 101.6
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is None  # 1.1 s behind: past the bound
    assert replicas.choose(1000) is None  # even for a token it has replayed: it lags
    standby.position = 5000
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert _gauge(metrics, "keel_replica_lag_seconds", "replica-0") == 0
    assert replicas.choose(5000) is replicas.members[0]


async def test_a_dead_or_promoted_replica_is_skipped_until_a_poll_finds_it_a_standby_again() -> None:
    clock = Clock()
    primary = Positions(PRIMARY_POSITION, 1000)
    first, second = Positions(REPLAYED_POSITION, 1000), Positions(REPLAYED_POSITION, 1000)
    replicas, metrics = _set(clock, first, second)
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert {replicas.choose(None).name for _ in range(4)} == {"replica-0", "replica-1"}  # type: ignore[union-attr]
    first.fails = True
    second.position = None  # promoted: pg_last_wal_replay_lsn() is null
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is None
    assert _gauge(metrics, "keel_replica_up", "replica-0") == 0
    assert _gauge(metrics, "keel_replica_up", "replica-1") == 0
    first.fails = False
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is replicas.members[0]
    replicas.suspend(replicas.members[0], "a read failed")  # skipped at once, until the next poll
    assert replicas.choose(None) is None
    await replicas.poll(primary)  # type: ignore[arg-type]
    assert replicas.choose(None) is replicas.members[0]


def test_tokens_round_trip_and_malformed_ones_are_refused() -> None:
    from keel.domain.errors import ValidationFailed
    from keel.service.consistency import format_position, parse_position

    for position in (0, 1, 0xFFFFFFFF, 0x16_B374D848, (0xFFFFFFFF << 32) | 0xFFFFFFFF):
        assert parse_position(format_position(position)) == position
    assert parse_position("16/b374d848") == 0x16_B374D848
    for bad in ("", "16", "16/", "/1", "1/2/3", "g/1", "123456789/1", "1/123456789", "-1/1", "1 /2"):
        with pytest.raises(ValidationFailed):
            parse_position(bad)
