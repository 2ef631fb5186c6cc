"""The gRPC contract (contracts/proto/) only grows: `buf breaking` (FILE rules) against the image
of the published `.proto` (contracts/proto/published.image.json) finds nothing. And the check can
fail: the same command against a copy of the `.proto` with one field renumbered, and one with a
field removed, reports each. buf comes from the npm registry (scripts/ensure-buf.sh).

A change that keeps every promise (a new field, message or method) passes; to publish it, rebuild
the image: `.tools/bin/buf build contracts/proto --exclude-source-info -o
contracts/proto/published.image.json`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "contracts" / "proto"
PUBLISHED = PROTO / "published.image.json"
SOURCE = PROTO / "keel" / "profiles" / "v1" / "profiles.proto"


def _buf(*args: str | Path) -> subprocess.CompletedProcess[str]:
    buf = REPO / ".tools" / "bin" / "buf"  # the pinned one, not whatever `buf` is on PATH
    assert buf.exists(), "buf is missing: run scripts/ensure-buf.sh"
    return subprocess.run(
        [buf, *map(str, args)], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


def test_the_proto_breaks_nothing_published() -> None:
    done = _buf("breaking", PROTO, "--against", PUBLISHED)
    assert done.returncode == 0, done.stdout + done.stderr


_FIELD = re.compile(r"^(\s+[\w.]+ (\w+) = )(\d+)(;.*)$", re.M)  # `type name = N;`


def _copy_with(tmp_path: Path, name: str, replacement: str) -> Path:
    """contracts/proto copied, its first numbered field's declaration replaced."""
    copy = tmp_path / name
    shutil.copytree(PROTO, copy)
    target = copy / SOURCE.relative_to(PROTO)
    text = target.read_text()
    changed = _FIELD.sub(replacement, text, count=1)
    assert changed != text
    target.write_text(changed)
    return copy


def test_the_check_reports_a_renumbered_and_a_removed_field(tmp_path: Path) -> None:
    first = _FIELD.search(SOURCE.read_text())
    assert first is not None
    prefix, name, number, rest = first.groups()
    renumbered = _copy_with(tmp_path, "renumbered", f"{prefix}{int(number) + 100}{rest}")
    removed = _copy_with(tmp_path, "removed", "")
    for copy in (renumbered, removed):
        done = _buf("breaking", copy, "--against", PUBLISHED)
        assert done.returncode != 0, done.stdout + done.stderr
        assert f'Previously present field "{number}" with name "{name}"' in done.stdout, (
            done.stdout + done.stderr
        )
