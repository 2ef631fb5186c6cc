"""The history checker on synthetic histories: one history per violation it must catch, and the
unknown outcomes (`info`) and stale-marked reads it must accept."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from testkit.history import (
    DUPLICATE_CREATE,
    DUPLICATE_VERSION,
    FAILED_WRITE_APPLIED,
    FINAL_VERSION_BEHIND,
    LOST_CREATE,
    LOST_DELETE,
    LOST_UPDATE,
    MISSING_READ,
    PHANTOM_WRITE,
    REALTIME_STALE_READ,
    STALE_READ,
    VERSION_INCONSISTENT,
    WRITE_APPLIED_TWICE,
    CheckReport,
    FinalProfile,
    History,
    Outcome,
    check,
)


def new_history() -> History:
    ticks = itertools.count()
    return History(clock=lambda: float(next(ticks)))


def create(h: History, process: int, key: str, profile: str, outcome: Outcome = "ok") -> None:
    invocation = h.invoke(process, "create", key)
    value = {"version": 1} if outcome == "ok" else {}
    h.complete(invocation, outcome, profile=profile if outcome == "ok" else None, value=value)


def update(h: History, process: int, key: str, profile: str, version: int, outcome: Outcome = "ok") -> None:
    invocation = h.invoke(process, "update", key, profile=profile)
    h.complete(invocation, outcome, value={"version": version} if outcome == "ok" else {})


def read(h: History, process: int, key: str, profile: str, version: int, *, stale: bool = False) -> None:
    invocation = h.invoke(process, "read", key, profile=profile)
    h.complete(invocation, "ok", value={"version": version, "stale": stale})


def delete(h: History, process: int, key: str, profile: str, outcome: Outcome = "ok") -> None:
    h.complete(h.invoke(process, "delete", key, profile=profile), outcome)


def row(profile: str, op: str, version: int, *updates: str, deleted: bool = False) -> FinalProfile:
    attributes: dict[str, Any] = {"op": op, **{f"u_{key}": True for key in updates}}
    return FinalProfile(profile, version, deleted, attributes)


def state(*rows: FinalProfile) -> dict[str, FinalProfile]:
    return {r.id: r for r in rows}


def clean() -> tuple[History, dict[str, FinalProfile]]:
    """Two clients: two profiles, updates, reads, one delete; everything consistent."""
    h = new_history()
    create(h, 0, "c1", "p1")
    create(h, 1, "c2", "p2")
    update(h, 0, "u1", "p1", 2)
    update(h, 1, "u2", "p1", 3)
    read(h, 0, "r1", "p1", 3)
    read(h, 1, "r2", "p2", 1)
    delete(h, 1, "d1", "p2")
    return h, state(row("p1", "c1", 3, "u1", "u2"), row("p2", "c2", 2, deleted=True))


def assert_only(report: CheckReport, kind: str) -> None:
    assert not report.ok
    assert report.kinds == {kind}, report.summary()


def test_a_clean_history_passes() -> None:
    h, final = clean()
    report = check(h, final)
    assert report.ok, report.summary()
    assert report.counts["create"]["ok"] == 2
    assert report.counts["update"]["ok"] == 2
    assert report.counts["read"]["ok"] == 2
    assert report.counts["delete"]["ok"] == 1
    assert report.profiles_checked == 2


def test_a_missing_acknowledged_create_is_lost() -> None:
    h, final = clean()
    create(h, 0, "c3", "p3")
    assert_only(check(h, final), LOST_CREATE)


def test_a_create_whose_row_holds_another_op_is_lost() -> None:
    h, final = clean()
    create(h, 0, "c3", "p3")
    final["p3"] = FinalProfile("p3", 1, False, {"op": "somebody-else"})
    assert_only(check(h, final), LOST_CREATE)


def test_a_create_applied_twice_is_an_idempotency_failure() -> None:
    h, final = clean()
    create(h, 0, "c3", "p3")
    final.update(state(row("p3", "c3", 1), row("p3-dup", "c3", 1)))
    assert_only(check(h, final), DUPLICATE_CREATE)


def test_an_acknowledged_update_missing_from_the_row_is_lost() -> None:
    h, final = clean()
    update(h, 0, "u3", "p1", 4)
    # The version moved (something was written) but u3's key is not there.
    final["p1"] = row("p1", "c1", 3, "u1", "u2")
    report = check(h, final)
    assert LOST_UPDATE in report.kinds
    assert report.kinds <= {LOST_UPDATE, FINAL_VERSION_BEHIND}


def test_more_versions_than_applied_writes_is_a_write_applied_twice() -> None:
    h, final = clean()
    final["p1"] = row("p1", "c1", 4, "u1", "u2")
    assert_only(check(h, final), WRITE_APPLIED_TWICE)


def test_an_update_nobody_invoked_is_a_phantom_write() -> None:
    h, final = clean()
    final["p1"] = row("p1", "c1", 4, "u1", "u2", "ghost")
    assert_only(check(h, final), PHANTOM_WRITE)


def test_a_definitely_failed_update_must_not_be_applied() -> None:
    h, final = clean()
    update(h, 0, "u3", "p1", 0, outcome="fail")
    final["p1"] = row("p1", "c1", 4, "u1", "u2", "u3")
    assert_only(check(h, final), FAILED_WRITE_APPLIED)


def test_a_definitely_failed_create_must_not_be_applied() -> None:
    h, final = clean()
    create(h, 0, "c3", "p3", outcome="fail")
    final["p3"] = row("p3", "c3", 1)
    assert_only(check(h, final), FAILED_WRITE_APPLIED)


def test_an_acknowledged_delete_of_a_live_row_is_lost() -> None:
    h, final = clean()
    delete(h, 0, "d2", "p1")
    assert_only(check(h, final), LOST_DELETE)


def test_two_updates_acknowledged_with_one_version() -> None:
    h, final = clean()
    update(h, 0, "u3", "p1", 3)
    final["p1"] = row("p1", "c1", 4, "u1", "u2", "u3")
    assert_only(check(h, final), DUPLICATE_VERSION)


def test_the_final_version_is_behind_an_acknowledged_one() -> None:
    h, final = clean()
    read(h, 1, "r3", "p1", 7)
    assert_only(check(h, final), FINAL_VERSION_BEHIND)


def test_a_process_reading_older_than_its_own_write_is_a_stale_read() -> None:
    h, final = clean()
    read(h, 1, "r3", "p1", 2)  # process 1 wrote version 3 itself
    report = check(h, final)
    assert STALE_READ in {v.kind for v in report.violations}
    assert report.violations[0].profile == "p1"
    assert report.violations[0].key == "r3"


def test_a_process_reading_a_profile_it_deleted_is_a_stale_read() -> None:
    h, final = clean()
    read(h, 1, "r3", "p2", 1)
    assert STALE_READ in {v.kind for v in check(h, final).violations}


def test_a_stale_marked_old_read_is_exempt_but_counted() -> None:
    h, final = clean()
    read(h, 1, "r3", "p1", 2, stale=True)
    read(h, 1, "r4", "p2", 1, stale=True)  # a cached copy of the deleted profile
    report = check(h, final)
    assert report.ok, report.summary()
    assert report.stale_reads == 2


def test_a_read_begun_after_another_process_write_is_realtime_checked() -> None:
    h, final = clean()
    read(h, 2, "r3", "p1", 2)  # process 2 never saw version 3: not its own staleness
    report = check(h, final)
    assert not report.violations
    assert [v.kind for v in report.realtime] == [REALTIME_STALE_READ]
    assert not report.ok


def test_a_read_concurrent_with_a_write_may_return_the_old_version() -> None:
    h = new_history()
    create(h, 0, "c1", "p1")
    reading = h.invoke(1, "read", "r1", profile="p1")
    update(h, 0, "u1", "p1", 2)
    h.complete(reading, "ok", value={"version": 1, "stale": False})
    read(h, 1, "r2", "p1", 2)
    report = check(h, state(row("p1", "c1", 2, "u1")))
    assert report.ok, report.summary()


@pytest.mark.parametrize("applied", [True, False])
def test_an_unknown_update_may_or_may_not_be_applied(applied: bool) -> None:
    h, final = clean()
    update(h, 0, "u3", "p1", 0, outcome="info")
    if applied:
        final["p1"] = row("p1", "c1", 4, "u1", "u2", "u3")
    report = check(h, final)
    assert report.ok, report.summary()
    assert report.counts["update"]["info"] == 1


@pytest.mark.parametrize("applied", [True, False])
def test_an_unknown_create_may_or_may_not_be_applied(applied: bool) -> None:
    h, final = clean()
    create(h, 0, "c3", "p3", outcome="info")
    h.invoke(1, "delete", "d2", profile="p1")  # never completed: unknown as well
    if applied:
        final["p3"] = row("p3", "c3", 1)
        final["p1"] = row("p1", "c1", 4, "u1", "u2", deleted=True)
    report = check(h, final)
    assert report.ok, report.summary()
    assert report.counts["create"]["info"] == 1
    assert report.counts["delete"]["info"] == 1


def test_a_history_round_trips_through_json_lines(tmp_path: Path) -> None:
    h, final = clean()
    update(h, 0, "u3", "p1", 0, outcome="info")
    path = tmp_path / "history.jsonl"
    h.save(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "process": 0,
        "type": "invoke",
        "f": "create",
        "key": "c1",
        "profile": None,
        "value": {},
        "time": 0.0,
    }
    loaded = History.load(path)
    assert loaded.ops == h.ops
    assert check(loaded, final).as_dict() == check(h, final).as_dict()


def test_the_report_is_json_and_a_short_summary() -> None:
    h, final = clean()
    update(h, 0, "u3", "p1", 4)
    report = check(h, final)
    document = json.loads(json.dumps(report.as_dict()))
    assert document["ok"] is False
    assert document["violations"][0] == {
        "kind": LOST_UPDATE,
        "profile": "p1",
        "key": "u3",
        "explanation": "acknowledged update u3 is lost: u_u3 is not in the final row",
    }
    summary = report.summary()
    assert "VIOLATIONS FOUND" in summary
    assert "lost-update x1" in summary
    assert len(summary.splitlines()) < 15


def test_a_process_runs_one_operation_at_a_time() -> None:
    h = new_history()
    h.invoke(0, "read", "r1", profile="p1")
    with pytest.raises(ValueError, match="before completing"):
        h.invoke(0, "read", "r2", profile="p1")


def read_missing(h: History, process: int, key: str, profile: str) -> None:
    """A read answered 404 (the workload records the status of a failure)."""
    invocation = h.invoke(process, "read", key, profile=profile)
    h.complete(invocation, "fail", value={"status": 404, "problem": "urn:keel:problem:not-found"})


def test_fewer_versions_than_applied_writes_is_version_inconsistent() -> None:
    h, final = clean()
    final["p1"] = row("p1", "c1", 2, "u1", "u2")  # two updates shown, one version for them
    report = check(h, final)
    assert VERSION_INCONSISTENT in report.kinds
    assert report.kinds <= {VERSION_INCONSISTENT, FINAL_VERSION_BEHIND}, report.summary()


def test_a_deleted_row_that_nobody_deleted_is_a_phantom_write() -> None:
    h, final = clean()
    final["p1"] = row("p1", "c1", 4, "u1", "u2", deleted=True)
    assert_only(check(h, final), PHANTOM_WRITE)


def test_a_delete_that_definitely_failed_must_not_be_applied() -> None:
    h, final = clean()
    delete(h, 0, "d2", "p1", "fail")
    final["p1"] = row("p1", "c1", 4, "u1", "u2", deleted=True)
    assert_only(check(h, final), FAILED_WRITE_APPLIED)


def test_a_delete_applied_twice_bumps_one_version_too_many() -> None:
    h, final = clean()
    final["p2"] = row("p2", "c2", 3, deleted=True)
    assert_only(check(h, final), WRITE_APPLIED_TWICE)


@pytest.mark.parametrize("applied", [True, False])
def test_an_unknown_delete_may_or_may_not_be_applied(applied: bool) -> None:
    h, final = clean()
    delete(h, 0, "d2", "p1", "info")
    final["p1"] = row("p1", "c1", 4 if applied else 3, "u1", "u2", deleted=applied)
    report = check(h, final)
    assert report.ok, report.summary()


def test_a_404_for_an_acknowledged_create_is_a_missing_read() -> None:
    h, final = clean()
    read_missing(h, 0, "r3", "p1")
    assert_only(check(h, final), MISSING_READ)


def test_a_404_after_an_acknowledged_delete_is_fine() -> None:
    h, final = clean()
    read_missing(h, 0, "r3", "p2")  # d1 deleted p2 before this read began
    report = check(h, final)
    assert report.ok, report.summary()


def test_a_404_concurrent_with_an_unknown_delete_is_fine() -> None:
    h, final = clean()
    invocation = h.invoke(1, "delete", "d2", profile="p1")
    read_missing(h, 0, "r3", "p1")
    h.complete(invocation, "info")
    final["p1"] = row("p1", "c1", 4, "u1", "u2", deleted=True)
    report = check(h, final)
    assert report.ok, report.summary()


def test_a_404_after_a_definitely_failed_delete_is_a_missing_read() -> None:
    h, final = clean()
    delete(h, 1, "d2", "p1", "fail")
    read_missing(h, 0, "r3", "p1")
    assert_only(check(h, final), MISSING_READ)


def test_a_404_for_a_create_acknowledged_after_the_read_began_is_fine() -> None:
    h, final = new_history(), state(row("p1", "c1", 1))
    created = h.invoke(0, "create", "c1")
    read_missing(h, 1, "r1", "p1")  # nobody could know p1 when the read began
    h.complete(created, "ok", profile="p1", value={"version": 1})
    report = check(h, final)
    assert report.ok, report.summary()
