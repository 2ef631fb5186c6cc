"""How many worker processes `keel serve` runs (keel.bootstrap.workers.worker_count), what each is
told, and the sentences it refuses with: several processes on one port share their rate limits
and cache invalidations through Redis, and gRPC runs in a process of its own."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from keel.bootstrap.workers import WorkersRefused, management_ports, worker_count, worker_environment
from keel.cli import app
from keel.config import Settings

REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("settings", "cores", "expected"),
    [
        ({}, 4, 1),  # the embedded default: one process, as before
        ({"redis_url": REDIS}, 4, 4),  # one per core once the state is shared
        ({"redis_url": REDIS, "grpc_port": 50051}, 4, 1),  # gRPC beside HTTP: one process
        ({"workers": 1}, 4, 1),
        ({"workers": 3, "redis_url": REDIS}, 4, 3),
    ],
)
def test_the_worker_count(settings: dict[str, object], cores: int, expected: int) -> None:
    assert worker_count(Settings(**settings), cores=cores) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"workers": 2}, "without KEEL_REDIS_URL"),
        ({"workers": 2, "redis_url": REDIS, "grpc_port": 50051}, "serve gRPC in a process of its own"),
    ],
)
def test_workers_that_would_not_share_their_state_are_refused(
    settings: dict[str, object], sentence: str
) -> None:
    with pytest.raises(WorkersRefused, match=sentence):
        worker_count(Settings(**settings))  # type: ignore[arg-type]


def test_the_command_refuses_them_with_the_sentence_before_touching_the_database() -> None:
    result = CliRunner().invoke(
        app,
        ["serve", "--workers", "2"],
        env={"KEEL_DATABASE_URL": "sqlite:////nonexistent/dir/keel.sqlite3", "KEEL_REDIS_URL": None},
    )
    assert result.exit_code == 1
    assert "keel: cannot start: 2 workers without KEEL_REDIS_URL" in result.output


def test_a_worker_is_told_the_resolved_count_and_the_command_lines_overrides() -> None:
    assert worker_environment(2, {"core_url": "grpc://core:50051", "workers": 0}) == {
        "KEEL_CORE_URL": "grpc://core:50051",
        "KEEL_WORKERS": "2",
        "KEEL_SUPERVISOR_PID": str(os.getpid()),
    }


def test_each_worker_may_take_one_management_port_of_its_nodes_run() -> None:
    assert management_ports(Settings(management_port=9100, workers=3)) == [9100, 9101, 9102]
    assert management_ports(Settings(management_port=9100)) == [9100]
    assert management_ports(Settings(management_port=0, workers=3)) == [0]
    assert management_ports(Settings()) == []
