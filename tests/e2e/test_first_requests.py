"""The first requests after start-up import nothing: an import on a request runs on the event
loop while every other request waits (anyio's asyncio backend, imported by the router's first
timeout scope, held the first `/healthz` after each start for 60 ms on a busy machine). Checked
in a fresh interpreter (tests/e2e/first_request_imports.py), since this one has imported
everything long ago."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _keel(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "keel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_first_requests_after_start_up_import_no_module(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    env = {**os.environ, "KEEL_DATABASE_URL": database_url}
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", "profiles:read", "--quiet").strip().splitlines()[-1]
    done = subprocess.run(
        [sys.executable, str(HERE / "first_request_imports.py"), database_url, token],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    imported: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    missing = "/v1/profiles/0000000000000000000000"
    assert set(imported) == {"/healthz (200)", f"{missing} (401)", f"{missing} (404)"}, imported
    assert all(modules == [] for modules in imported.values()), imported
