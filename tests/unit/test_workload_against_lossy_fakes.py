"""The workload and the history checker against in-process fakes of Keel's profile API: a
faithful one must pass, and each deliberately faulty one (it acknowledges a write and drops it,
forgets a created profile, or answers a read from an old copy) must be reported. Without these,
"0 violations" from an experiment could also mean a checker that sees nothing."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from testkit.history import (
    LOST_CREATE,
    LOST_UPDATE,
    MISSING_READ,
    REALTIME_STALE_READ,
    STALE_READ,
    FinalProfile,
    History,
    check,
)
from testkit.workload import run_workload

MIX = {"create": 0.3, "update": 0.35, "read": 0.3, "delete": 0.05}


@dataclass
class _Row:
    version: int
    attributes: dict[str, Any]
    deleted: bool = False
    old_version: int = 1  # what a stale copy would answer


@dataclass
class FakeProfiles(httpx.AsyncBaseTransport):
    """Keel's profile routes as the workload uses them, in memory. `drop_update` /
    `forget_create`: the n-th acknowledged update or create is answered but never stored;
    `stale_read`: the n-th read of a profile written since its creation answers its first
    version."""

    drop_update: int | None = None
    forget_create: int | None = None
    stale_read: int | None = None
    rows: dict[str, _Row] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _updates: int = 0
    _creates: int = 0
    _reads_of_written: int = 0

    def final_state(self) -> dict[str, FinalProfile]:
        return {i: FinalProfile(i, r.version, r.deleted, dict(r.attributes)) for i, r in self.rows.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1/profiles").strip("/")
        if request.method == "POST" and not path:
            return self._create(request)
        row = self.rows.get(path)
        if row is None or row.deleted:
            return _problem(404)
        if request.method == "PATCH":
            return self._update(path, row, json.loads(request.content))
        if request.method == "DELETE":
            row.deleted, row.version = True, row.version + 1
            return httpx.Response(204)
        return self._read(path, row)

    def _create(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        if key in self.by_key:
            profile_id = self.by_key[key]
            return httpx.Response(201, json={"id": profile_id, "version": 1})
        profile_id = f"p{next(self._ids)}"
        self._creates += 1
        if self._creates != self.forget_create:
            self.by_key[key] = profile_id
            self.rows[profile_id] = _Row(1, dict(json.loads(request.content)["attributes"]))
        return httpx.Response(201, json={"id": profile_id, "version": 1})

    def _update(self, profile_id: str, row: _Row, patch: dict[str, Any]) -> httpx.Response:
        self._updates += 1
        if self._updates == self.drop_update:
            return httpx.Response(200, json={"id": profile_id, "version": row.version + 1})
        row.attributes.update(patch["attributes"])
        row.version += 1
        return httpx.Response(200, json={"id": profile_id, "version": row.version})

    def _read(self, profile_id: str, row: _Row) -> httpx.Response:
        if row.version > 1:
            self._reads_of_written += 1
            if self._reads_of_written == self.stale_read:
                return httpx.Response(200, json={"id": profile_id, "version": row.old_version})
        return httpx.Response(200, json={"id": profile_id, "version": row.version})


def _problem(status: int) -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "urn:keel:problem:not-found", "status": status},
        headers={"content-type": "application/problem+json"},
    )


async def _run(fake: FakeProfiles) -> tuple[History, set[str]]:
    history = History()
    await run_workload(
        "http://fake",
        "token",
        clients=3,
        duration_s=600.0,  # bounded by the count below, not by the clock
        max_operations=400,
        seed=5,
        mix=MIX,
        history=history,
        create_grace_s=0.1,
        transport=fake,
    )
    report = check(history, fake.final_state())
    return history, report.kinds


async def test_a_faithful_fake_passes() -> None:
    fake = FakeProfiles()
    history, kinds = await _run(fake)
    assert not kinds
    acknowledged = {f: sum(1 for op in history.ops if op.type == "ok" and op.f == f) for f in MIX}
    assert min(acknowledged.values()) >= 1, acknowledged  # every kind of operation was exercised


async def test_an_acknowledged_update_that_was_dropped_is_reported() -> None:
    _, kinds = await _run(FakeProfiles(drop_update=3))
    assert LOST_UPDATE in kinds


async def test_an_acknowledged_create_that_was_forgotten_is_reported() -> None:
    _, kinds = await _run(FakeProfiles(forget_create=2))
    assert LOST_CREATE in kinds
    assert MISSING_READ in kinds  # later reads of it answered 404


@pytest.mark.parametrize("nth", [1, 5])
async def test_a_read_answered_from_an_old_copy_is_reported(nth: int) -> None:
    _, kinds = await _run(FakeProfiles(stale_read=nth))
    assert kinds & {STALE_READ, REALTIME_STALE_READ}
