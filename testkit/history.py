"""What clients saw, and a Jepsen-style check of it against the database's final state.

A history is a list of operations as the clients lived them: each logical operation is an
`invoke` followed, on the same process, by exactly one completion: `ok`, `fail` (definitely not
applied) or `info` (outcome unknown: a timeout, a reset connection, a 5xx). A process runs one
operation at a time, so an invoke pairs with the next completion of its process; an invoke that
never completed counts as `info`.

The checker relies on the workload's shape (see `testkit/workload.py`):

- a create with key k stores `attributes.op == k` and is retried with the same Idempotency-Key;
- an update with key k merge-patches `{"attributes": {"u_<k>": true}}`: one new attribute and
  exactly one version per applied update, so the final row says which updates were applied;
- a delete is soft and bumps the version once;
- a read answers `{"version": n, "stale": bool}`; stale answers (served from a cache while the
  database is away) are exempt from the freshness checks. A read that failed records the HTTP
  `status` it got: a 404 for a profile whose create was acknowledged before the read began is a
  violation (`missing-read`) unless a delete of it that was not a definite failure (acknowledged,
  or of unknown outcome, so it may have applied) began before the read ended.

Nothing here does I/O except `History.save` and `History.load` (JSON Lines).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

OpType = Literal["invoke", "ok", "fail", "info"]
OpF = Literal["create", "update", "read", "delete"]
Outcome = Literal["ok", "fail", "info"]

OP_TYPES: tuple[OpType, ...] = ("invoke", "ok", "fail", "info")
OP_FS: tuple[OpF, ...] = ("create", "update", "read", "delete")
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "info")

UPDATE_PREFIX = "u_"
OP_ATTRIBUTE = "op"

# Violation kinds, stable: tests and fault scenarios assert on them.
LOST_CREATE = "lost-create"  # 1
DUPLICATE_CREATE = "duplicate-create"  # 2
LOST_UPDATE = "lost-update"  # 3
WRITE_APPLIED_TWICE = "write-applied-twice"  # 4: more versions than applied writes
VERSION_INCONSISTENT = "version-inconsistent"  # 4: fewer versions than applied writes
PHANTOM_WRITE = "phantom-write"  # 4: a write nobody invoked
FAILED_WRITE_APPLIED = "failed-write-applied"  # 4: a definite failure that was applied anyway
LOST_DELETE = "lost-delete"  # 5
DUPLICATE_VERSION = "duplicate-version"  # 6
FINAL_VERSION_BEHIND = "final-version-behind"  # 6
STALE_READ = "stale-read"  # 7
REALTIME_STALE_READ = "realtime-stale-read"  # 8, reported apart
MISSING_READ = "missing-read"  # 9: a 404 for a profile whose create was acknowledged, not deleted


@dataclass(frozen=True, slots=True)
class Op:
    """One line of a history. `time` is monotonic seconds; `value` is free-form per f and type."""

    process: int
    type: OpType
    f: OpF
    key: str
    profile: str | None = None
    value: Mapping[str, Any] = field(default_factory=dict)
    time: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "key": self.key,
            "profile": self.profile,
            "value": dict(self.value),
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Op:
        if data["type"] not in OP_TYPES or data["f"] not in OP_FS:
            raise ValueError(f"not a history op: {data!r}")
        return cls(
            process=int(data["process"]),
            type=cast(OpType, data["type"]),
            f=cast(OpF, data["f"]),
            key=str(data["key"]),
            profile=data.get("profile"),
            value=dict(data.get("value") or {}),
            time=float(data.get("time", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Invocation:
    """The handle `History.invoke` returns; pass it to `History.complete`."""

    op: Op
    index: int


class History:
    """An append-only history. Not thread-safe: meant for one asyncio loop."""

    def __init__(self, ops: Iterable[Op] = (), *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ops: list[Op] = []
        self._open: dict[int, Invocation] = {}
        self._clock = clock
        for op in ops:
            self._append(op)

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def invoke(
        self,
        process: int,
        f: OpF,
        key: str,
        *,
        profile: str | None = None,
        value: Mapping[str, Any] | None = None,
    ) -> Invocation:
        op = Op(process, "invoke", f, key, profile, dict(value or {}), self._clock())
        return self._append(op)

    def complete(
        self,
        invocation: Invocation,
        outcome: Outcome,
        *,
        profile: str | None = None,
        value: Mapping[str, Any] | None = None,
    ) -> Op:
        started = invocation.op
        if self._open.get(started.process) != invocation:
            raise ValueError(f"process {started.process} has no open invocation {started.key!r}")
        op = Op(
            started.process,
            outcome,
            started.f,
            started.key,
            profile if profile is not None else started.profile,
            dict(value or {}),
            self._clock(),
        )
        self._append(op)
        return op

    def _append(self, op: Op) -> Invocation:
        invocation = Invocation(op, len(self._ops))
        if op.type == "invoke":
            # One operation at a time per process: that is what lets a saved history pair its
            # lines again without ids.
            if op.process in self._open:
                raise ValueError(f"process {op.process} invoked {op.key!r} before completing its last op")
            self._open[op.process] = invocation
        else:
            opened = self._open.pop(op.process, None)
            if opened is None or (opened.op.f, opened.op.key) != (op.f, op.key):
                raise ValueError(f"completion {op.key!r} of process {op.process} matches no invocation")
        self._ops.append(op)
        return invocation

    def save(self, path: Path | str) -> None:
        with Path(path).open("w", encoding="utf-8") as out:
            for op in self._ops:
                out.write(json.dumps(op.as_dict(), sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> History:
        with Path(path).open(encoding="utf-8") as lines:
            return cls(Op.from_dict(json.loads(line)) for line in lines if line.strip())


@dataclass(frozen=True, slots=True)
class FinalProfile:
    """A profile row as the database holds it at the end (soft-deleted rows included)."""

    id: str
    version: int
    deleted: bool
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    profile: str | None
    key: str | None
    explanation: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "profile": self.profile, "key": self.key, "explanation": self.explanation}


@dataclass(frozen=True, slots=True)
class Completed:
    """A logical operation: its invocation and its completion, with their history positions."""

    process: int
    f: OpF
    key: str
    outcome: Outcome
    profile: str | None
    value: Mapping[str, Any]
    invoked_at: int
    completed_at: int | None  # None: never completed (counts as info)

    @property
    def version(self) -> int | None:
        version = self.value.get("version")
        return version if isinstance(version, int) else None

    @property
    def stale(self) -> bool:
        return bool(self.value.get("stale", False))


def completed_ops(ops: Iterable[Op]) -> list[Completed]:
    """Pair every invocation with its completion, in invocation order."""
    pending: dict[int, tuple[int, Op]] = {}
    done: list[Completed] = []
    for index, op in enumerate(ops):
        if op.type == "invoke":
            pending[op.process] = (index, op)
            continue
        invoked_at, started = pending.pop(op.process)
        profile = op.profile if op.profile is not None else started.profile
        done.append(Completed(op.process, op.f, op.key, op.type, profile, op.value, invoked_at, index))
    for invoked_at, started in pending.values():
        done.append(
            Completed(started.process, started.f, started.key, "info", started.profile, {}, invoked_at, None)
        )
    return sorted(done, key=lambda c: c.invoked_at)


@dataclass
class CheckReport:
    counts: dict[str, dict[str, int]]
    violations: list[Violation]
    realtime: list[Violation]
    stale_reads: int
    profiles_checked: int

    @property
    def ok(self) -> bool:
        return not self.violations and not self.realtime

    @property
    def kinds(self) -> set[str]:
        return {v.kind for v in (*self.violations, *self.realtime)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "stale_reads": self.stale_reads,
            "profiles_checked": self.profiles_checked,
            "violations": [v.as_dict() for v in self.violations],
            "realtime": [v.as_dict() for v in self.realtime],
        }

    def summary(self, limit: int = 20) -> str:
        total = sum(sum(by_type.values()) for by_type in self.counts.values())
        verdict = "OK" if self.ok else "VIOLATIONS FOUND"
        lines = [f"history check: {verdict}: {total} operations, {self.profiles_checked} profiles checked"]
        for f, by_type in self.counts.items():
            outcomes = "  ".join(f"{outcome} {by_type.get(outcome, 0):>6}" for outcome in OUTCOMES)
            extra = f"  (stale-marked {self.stale_reads})" if f == "read" else ""
            lines.append(f"  {f:<7} {outcomes}{extra}")
        for title, found in (("violations", self.violations), ("realtime", self.realtime)):
            if not found:
                lines.append(f"{title}: none")
                continue
            by_kind = Counter(v.kind for v in found)
            lines.append(f"{title}: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(by_kind.items())))
            lines.extend(f"  - [{v.kind}] {v.explanation}" for v in found[:limit])
            if len(found) > limit:
                lines.append(f"  … and {len(found) - limit} more")
        return "\n".join(lines)


def check(history: History | Iterable[Op], final_state: Mapping[str, FinalProfile]) -> CheckReport:
    """Check a history against the final rows (profile id -> row)."""
    ops = history.ops if isinstance(history, History) else tuple(history)
    done = completed_ops(ops)
    violations: list[Violation] = []
    violations += _check_creates(done, final_state)
    violations += _check_updates(done, final_state)
    violations += _check_applied_writes(done, final_state)
    violations += _check_deletes(done, final_state)
    violations += _check_versions(done, final_state)
    stale, realtime = _check_reads(done)
    violations += stale
    violations += _check_missing_reads(done)
    return CheckReport(
        counts=_counts(done),
        violations=violations,
        realtime=realtime,
        stale_reads=sum(1 for c in done if c.f == "read" and c.outcome == "ok" and c.stale),
        profiles_checked=len(_workload_rows(done, final_state)),
    )


def _counts(done: Iterable[Completed]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {f: {outcome: 0 for outcome in OUTCOMES} for f in OP_FS}
    for c in done:
        counts[c.f][c.outcome] += 1
    return counts


def _rows_by_op(final_state: Mapping[str, FinalProfile]) -> dict[str, list[FinalProfile]]:
    rows: dict[str, list[FinalProfile]] = defaultdict(list)
    for row in final_state.values():
        op_key = row.attributes.get(OP_ATTRIBUTE)
        if isinstance(op_key, str):
            rows[op_key].append(row)
    return rows


def _workload_rows(done: Iterable[Completed], final_state: Mapping[str, FinalProfile]) -> list[FinalProfile]:
    """The rows this history created: only their versions can be accounted for in full (rows
    from earlier runs or seeds, read via `read_ids`, had writes this history never saw)."""
    create_keys = {c.key for c in done if c.f == "create"}
    return [row for row in final_state.values() if row.attributes.get(OP_ATTRIBUTE) in create_keys]


def _check_creates(done: list[Completed], final_state: Mapping[str, FinalProfile]) -> list[Violation]:
    found: list[Violation] = []
    rows_by_op = _rows_by_op(final_state)
    for c in done:
        if c.f != "create":
            continue
        rows = rows_by_op.get(c.key, [])
        if c.outcome == "ok":
            found.extend(_lost_create(c, final_state))
        if len(rows) > 1:
            ids = ", ".join(sorted(row.id for row in rows))
            explanation = f"create {c.key} was applied {len(rows)} times: {ids}"
            found.append(Violation(DUPLICATE_CREATE, None, c.key, explanation))
        if c.outcome == "fail" and rows:
            explanation = f"create {c.key} definitely failed but row {rows[0].id} exists"
            found.append(Violation(FAILED_WRITE_APPLIED, rows[0].id, c.key, explanation))
    return found


def _lost_create(c: Completed, final_state: Mapping[str, FinalProfile]) -> list[Violation]:
    row = final_state.get(c.profile) if c.profile is not None else None
    if row is None:
        return [Violation(LOST_CREATE, c.profile, c.key, f"acknowledged create {c.key} is missing")]
    if row.attributes.get(OP_ATTRIBUTE) != c.key:
        held = row.attributes.get(OP_ATTRIBUTE)
        explanation = f"acknowledged create {c.key}: row {c.profile} holds op {held!r} instead"
        return [Violation(LOST_CREATE, c.profile, c.key, explanation)]
    return []


def _check_updates(done: list[Completed], final_state: Mapping[str, FinalProfile]) -> list[Violation]:
    found: list[Violation] = []
    for c in done:
        if c.f != "update" or c.outcome != "ok":
            continue
        row = final_state.get(c.profile) if c.profile is not None else None
        if row is None or UPDATE_PREFIX + c.key not in row.attributes:
            where = "its profile is missing" if row is None else f"u_{c.key} is not in the final row"
            found.append(
                Violation(LOST_UPDATE, c.profile, c.key, f"acknowledged update {c.key} is lost: {where}")
            )
    return found


def _check_applied_writes(done: list[Completed], final_state: Mapping[str, FinalProfile]) -> list[Violation]:
    """Every applied write is visible in its row, so the row must hold exactly as many versions
    as writes it shows, and only writes that somebody asked for."""
    found: list[Violation] = []
    updates = {c.key: c for c in done if c.f == "update"}
    deletes: dict[str | None, list[Completed]] = defaultdict(list)
    for c in done:
        if c.f == "delete":
            deletes[c.profile].append(c)
    for row in _workload_rows(done, final_state):
        applied = [name[len(UPDATE_PREFIX) :] for name in row.attributes if name.startswith(UPDATE_PREFIX)]
        for key in applied:
            found.extend(_applied_update_violations(row, key, updates.get(key)))
        if row.deleted:
            found.extend(_applied_delete_violations(row, deletes.get(row.id, [])))
        expected = 1 + len(applied) + (1 if row.deleted else 0)
        if row.version != expected:
            kind = WRITE_APPLIED_TWICE if row.version > expected else VERSION_INCONSISTENT
            found.append(
                Violation(
                    kind,
                    row.id,
                    None,
                    f"profile {row.id} is at version {row.version} but shows {expected - 1} applied "
                    f"writes ({len(applied)} updates{', a delete' if row.deleted else ''}): "
                    f"expected version {expected}",
                )
            )
    return found


def _applied_update_violations(row: FinalProfile, key: str, update: Completed | None) -> list[Violation]:
    if update is None or update.profile != row.id:
        where = "never invoked" if update is None else f"invoked on {update.profile}"
        return [Violation(PHANTOM_WRITE, row.id, key, f"profile {row.id} holds u_{key}, an update {where}")]
    if update.outcome == "fail":
        explanation = f"update {key} definitely failed but {row.id} holds u_{key}"
        return [Violation(FAILED_WRITE_APPLIED, row.id, key, explanation)]
    return []


def _applied_delete_violations(row: FinalProfile, deletes: list[Completed]) -> list[Violation]:
    if any(c.outcome != "fail" for c in deletes):
        return []
    if deletes:
        keys = ", ".join(c.key for c in deletes)
        return [
            Violation(
                FAILED_WRITE_APPLIED,
                row.id,
                deletes[0].key,
                f"profile {row.id} is deleted but every delete of it definitely failed ({keys})",
            )
        ]
    return [Violation(PHANTOM_WRITE, row.id, None, f"profile {row.id} is deleted but nobody deleted it")]


def _check_deletes(done: list[Completed], final_state: Mapping[str, FinalProfile]) -> list[Violation]:
    found: list[Violation] = []
    for c in done:
        if c.f != "delete" or c.outcome != "ok":
            continue
        row = final_state.get(c.profile) if c.profile is not None else None
        if row is None or not row.deleted:
            where = "its profile is missing" if row is None else "the row is live"
            found.append(
                Violation(LOST_DELETE, c.profile, c.key, f"acknowledged delete {c.key} is lost: {where}")
            )
    return found


def _check_missing_reads(done: list[Completed]) -> list[Violation]:
    """Check 9: a read may answer 404 only for a profile nobody acknowledged creating before it
    began, or that a delete (not definitely failed) begun before the read ended may have
    removed."""
    acknowledged_at: dict[str, int] = {}
    for c in done:
        if c.f == "create" and c.outcome == "ok" and c.profile is not None and c.completed_at is not None:
            acknowledged_at[c.profile] = c.completed_at
    deletes_began: dict[str, list[int]] = defaultdict(list)
    for c in done:
        if c.f == "delete" and c.outcome != "fail" and c.profile is not None:
            deletes_began[c.profile].append(c.invoked_at)
    found: list[Violation] = []
    for c in done:
        if c.f != "read" or c.outcome != "fail" or c.value.get("status") != 404 or c.profile is None:
            continue
        created = acknowledged_at.get(c.profile)
        if created is None or created > c.invoked_at:
            continue  # not known to exist when the read began
        ended = c.completed_at if c.completed_at is not None else len(done) * 2 + 1
        if any(began < ended for began in deletes_began.get(c.profile, [])):
            continue
        explanation = (
            f"read {c.key} (process {c.process}) of {c.profile} answered 404, but its create was "
            "acknowledged before the read began and no delete of it was"
        )
        found.append(Violation(MISSING_READ, c.profile, c.key, explanation))
    return found


def _check_versions(done: list[Completed], final_state: Mapping[str, FinalProfile]) -> list[Violation]:
    found: list[Violation] = []
    update_versions: dict[tuple[str, int], str] = {}
    for c in done:
        if c.outcome != "ok" or c.profile is None or c.version is None:
            continue
        if c.f == "update":
            earlier = update_versions.setdefault((c.profile, c.version), c.key)
            if earlier != c.key:
                found.append(
                    Violation(
                        DUPLICATE_VERSION,
                        c.profile,
                        c.key,
                        f"updates {earlier} and {c.key} of {c.profile} were both acknowledged "
                        f"as version {c.version}",
                    )
                )
        row = final_state.get(c.profile)
        if row is not None and row.version < c.version:
            found.append(
                Violation(
                    FINAL_VERSION_BEHIND,
                    c.profile,
                    c.key,
                    f"{c.f} {c.key} saw version {c.version} of {c.profile}, "
                    f"but the final row is at version {row.version}",
                )
            )
    return found


@dataclass
class _Seen:
    """The newest state of one profile known to somebody: a version, and whether it's deleted."""

    version: int = 0
    deleted: bool = False

    def learn(self, c: Completed) -> None:
        if c.f == "delete":
            self.deleted = True
        elif c.version is not None:
            self.version = max(self.version, c.version)


@dataclass
class _Expectation:
    read: Completed
    own: _Seen
    anyone: _Seen


def _check_reads(done: list[Completed]) -> tuple[list[Violation], list[Violation]]:
    """Checks 7 (a process never reads older than what it already saw) and 8 (nobody reads
    older than a write acknowledged before the read began), replaying the history in order."""
    events: list[tuple[int, int, Completed]] = []
    for c in done:
        if c.f == "read":
            events.append((c.invoked_at, 0, c))
        if c.completed_at is not None and c.outcome == "ok":
            events.append((c.completed_at, 1, c))
    events.sort(key=lambda event: (event[0], event[1]))

    own: dict[tuple[int, str], _Seen] = defaultdict(_Seen)
    anyone: dict[str, _Seen] = defaultdict(_Seen)
    expectations: list[_Expectation] = []
    for _, is_completion, c in events:
        if c.profile is None:
            continue
        if not is_completion:
            # Copies: what was known when the read began, not when it ended.
            known_own, known_any = replace(own[(c.process, c.profile)]), replace(anyone[c.profile])
            expectations.append(_Expectation(c, known_own, known_any))
            continue
        own[(c.process, c.profile)].learn(c)
        if c.f != "read":
            anyone[c.profile].learn(c)

    stale: list[Violation] = []
    realtime: list[Violation] = []
    for expectation in expectations:
        read = expectation.read
        if read.outcome != "ok" or read.stale or read.version is None:
            continue
        if problem := _older_than(read, expectation.own, "that this process had already seen"):
            stale.append(Violation(STALE_READ, read.profile, read.key, problem))
        if problem := _older_than(read, expectation.anyone, "acknowledged before the read began"):
            realtime.append(Violation(REALTIME_STALE_READ, read.profile, read.key, problem))
    return stale, realtime


def _older_than(read: Completed, seen: _Seen, known_from: str) -> str | None:
    assert read.version is not None
    what = f"read {read.key} (process {read.process}) of {read.profile}"
    if seen.deleted:
        return f"{what} found it live, after a delete {known_from}"
    if read.version < seen.version:
        return f"{what} returned version {read.version}, older than version {seen.version} {known_from}"
    return None
