"""An SDK generated from each published version's OpenAPI document, as a user would make it
(openapi-python-client, in its own hash-locked tool environment: `scripts/ensure-openapi-client.sh`),
then used against a real served Keel (`keel serve` on SQLite): it must build, name its
operations for what they do, share its types, and read Keel's answers, problems included,
as the models the document promises.

And TypeScript types generated from the same documents (openapi-typescript, with `tsc`:
`scripts/ensure-openapi-typescript.sh`), against which `typescript/<version>.ts`, what a
TypeScript client of that version writes, must type-check, and the other version's must not."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel.api.rest.api_versions import SUPPORTED_VERSIONS
from tests.e2e.test_served_process import Served, keel_served

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / ".tools" / "openapi-client" / "bin"
NODE_TOOLS = REPO / ".tools" / "openapi-typescript" / "node_modules" / ".bin"
TYPESCRIPT = Path(__file__).with_name("typescript")
SMOKE = Path(__file__).with_name("generated_client_smoke.py")
# literal_enums: the timezone enum holds GMT0, GMT+0 and GMT-0, which the default enum classes
# would all name GMT0 (the generator refuses); post_hooks: no formatter run on the output.
CONFIG = "literal_enums: true\npost_hooks: []\n"
PROBLEM = "urn:keel:problem:"


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # One server per version: each test's list must hold only the profile it made.
    settings = {"KEEL_ACCESS_LOG": "false"}
    with keel_served(tmp_path_factory.mktemp("sdk"), settings, "profiles:read,profiles:write") as served:
        yield served


def _document(served: Served, version: str, folder: Path) -> None:
    document = httpx.get(f"{served.base_url}/openapi.json", params={"version": version}, timeout=30)
    assert document.status_code == 200
    (folder / "openapi.json").write_bytes(document.content)


def _generate(served: Served, version: str, folder: Path) -> Path:
    generator = TOOL / "openapi-python-client"
    assert generator.exists(), f"{generator} is missing: run scripts/ensure-openapi-client.sh"
    _document(served, version, folder)
    (folder / "config.yaml").write_text(CONFIG)
    result = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            "openapi.json",
            "--config",
            "config.yaml",
            "--meta",
            "none",
            "--output-path",
            "keel_client",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=folder,
    )
    report = result.stdout + result.stderr
    # The generator leaves out what it cannot type and says so with a warning, exit code 0.
    assert result.returncode == 0, report
    assert "Warning" not in report, report
    assert "Error" not in report, report
    return folder / "keel_client"


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_a_generated_sdk_creates_reads_lists_and_reads_problems(
    served: Served, version: str, tmp_path: Path
) -> None:
    client = _generate(served, version, tmp_path)
    operations = {p.stem for p in (client / "api" / "profiles").glob("*.py")} - {"__init__"}
    named = {"create_profile", "get_profile", "list_profiles", "update_profile", "delete_profile"}
    assert named <= operations
    models = {p.stem for p in (client / "models").glob("*.py")}
    # One type for the version header, not one per operation.
    assert "keel_version" in models
    assert not [m for m in models if m.endswith("_keel_version")]

    result = subprocess.run(
        [str(TOOL / "python"), str(SMOKE), served.base_url, served.token, version],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    assert seen["create_status"] == 201
    assert seen["created_is_profile"]
    assert seen["read_status"] == 200
    assert seen["read"]["handle"] == "sdk_user"
    assert seen["read"]["emails"][0]["address"] == "sdk@example.com"
    assert seen["missing_status"] == 404
    assert seen["missing"] == {"type": PROBLEM + "not-found", "status": 404, "fields": []}
    assert seen["invalid_status"] == 422
    assert seen["invalid"]["type"] == PROBLEM + "validation"
    assert "/handle" in seen["invalid"]["fields"]
    assert "/emails" in seen["invalid"]["fields"]
    assert seen["list_status"] == 200
    assert [item["handle"] for item in seen["list"]["items"]] == ["sdk_user"]
    if version == "2026-11-28":
        assert "primary_email" not in seen["read"]
        assert seen["list"]["next_cursor"] is None
        assert "links" not in seen["list"]
    else:
        assert seen["read"]["primary_email"] == "sdk@example.com"
        assert seen["list"]["links"] == {"next": None}
        assert "next_cursor" not in seen["list"]


def _type_check(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    (folder / "client.ts").write_text(source)
    options = ["--noEmit", "--strict", "--target", "es2022", "--module", "es2022"]
    options += ["--moduleResolution", "bundler"]
    return subprocess.run(
        [str(NODE_TOOLS / "tsc"), *options, "client.ts"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=folder,
    )


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_typescript_types_generated_from_a_version_hold_what_its_clients_write(
    served: Served, version: str, tmp_path: Path
) -> None:
    generator = NODE_TOOLS / "openapi-typescript"
    assert generator.exists(), f"{generator} is missing: run scripts/ensure-openapi-typescript.sh"
    _document(served, version, tmp_path)
    # Without the flag, a field with a default (an email's `primary`) is required in requests too.
    generated = subprocess.run(
        [str(generator), "openapi.json", "--default-non-nullable=false", "-o", "keel.d.ts"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # A `@ts-expect-error` line that does not fail makes tsc fail: each marks a shape the
    # version must not have.
    own = _type_check(tmp_path, (TYPESCRIPT / f"{version}.ts").read_text())
    assert own.returncode == 0, own.stdout + own.stderr
    for other in sorted(SUPPORTED_VERSIONS - {version}):
        crossed = _type_check(tmp_path, (TYPESCRIPT / f"{other}.ts").read_text())
        assert crossed.returncode != 0, other
        assert "primary_email" in crossed.stdout, crossed.stdout
