"""The wheel a release would ship works away from the source tree: built from this checkout
(`pip wheel`, the build backend pinned in pyproject.toml), installed into a new virtual
environment, it carries its license, migrations and browser assets, and its `keel` command
migrates a database, creates a key and serves a profile over REST and GraphQL.

The new environment reaches the dependencies through a `.pth` line naming this environment's
site-packages: a plain path, so the editable install of Keel there is not processed and `keel`
can only be the wheel's (checked)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
from testkit.ports import free_port
from testkit.processes import server

REPO = Path(__file__).resolve().parents[2]


def _run(*command: str | Path, env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_built_wheel_installs_and_serves_away_from_the_source_tree(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist", REPO, env=env)
    (wheel,) = (tmp_path / "dist").glob("keel-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "keel/py.typed" in names
    assert any(n.startswith("keel/storage/migrations/versions/0009") for n in names)
    assert any(n.startswith("keel/api/browser_pages/vendor/graphiql-") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "chaos/", "testkit/")) for n in names)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, env=env)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel, env=env)
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=env).strip()
    )
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_keel_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    where = _run(python, "-c", "import keel; print(keel.__file__)", env=env, cwd=tmp_path)
    assert where.strip().startswith(str(site)), where

    keel = venv / "bin" / "keel"
    port = free_port()
    served = {
        **env,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_PORT": str(port),
        "KEEL_WORKERS": "1",
    }
    _run(keel, "migrate", env=served)
    token = _run(keel, "keys", "create", "--quiet", env=served).strip()
    headers = {"Authorization": f"Bearer {token}"}
    with server("the wheel's keel", [str(keel), "serve"], served, tmp_path / "keel.log", port):
        base = f"http://127.0.0.1:{port}"
        body = {"handle": "from_a_wheel", "emails": [{"address": "wheel@example.com", "primary": True}]}
        created = httpx.post(f"{base}/v1/profiles", json=body, headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        read = httpx.get(f"{base}/v1/profiles/{created.json()['id']}", headers=headers, timeout=10)
        assert read.json()["handle"] == "from_a_wheel"
        query = {"query": 'query { profileByHandle(handle: "from_a_wheel") { id } }'}
        answered = httpx.post(f"{base}/graphql", json=query, headers=headers, timeout=10).json()
        assert answered["data"] == {"profileByHandle": {"id": created.json()["id"]}}, answered
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
