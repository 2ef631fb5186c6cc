"""The committed gRPC code is what scripts/generate-proto.sh makes from contracts/proto/ today."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "src/keel/api/grpc/wire/v1"


def test_the_committed_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "scripts/generate-proto.sh"), str(tmp_path)], check=True, timeout=120)
    fresh = {
        p.relative_to(tmp_path / "keel/api/grpc/wire/v1"): p.read_bytes()
        for p in (tmp_path / "keel/api/grpc/wire/v1").rglob("*.py*")
    }
    committed = {
        p.relative_to(GENERATED): p.read_bytes()
        for p in GENERATED.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    assert sorted(map(str, fresh)) == sorted(map(str, committed))
    stale = [str(name) for name, content in fresh.items() if committed[name] != content]
    assert not stale, f"regenerate with `make proto`: {stale} differ from contracts/proto/"
