"""Schemathesis against every published API version's OpenAPI document (and the unversioned
one, `GET /v1/versions`), over a real served
process (`keel serve`, uvicorn) on a real SQLite database, with an admin key: every check, a
bounded number of examples, and 0 failures. Statuses the API answers but does not document,
500s, schema mismatches and wrong `Allow` headers fail here."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.openapi_documents import DOCUMENTS, UNVERSIONED
from tests.e2e.test_served_process import Served, keel_served

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Enough to exercise every phase (examples, coverage, fuzzing, stateful) in a few seconds per
# version; fixed seed, so a failure reproduces.
MAX_EXAMPLES = 40
SEED = 20261128


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = {
        # The run explores the contract with hundreds of requests in seconds: a rate limit or the
        # load shedder would soon answer all of them with 429 or 503 and stop the exploration.
        "KEEL_RATELIMIT_ENABLED": "false",
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
        "KEEL_ACCESS_LOG": "false",
    }
    scopes = "admin,profiles:read,profiles:write"
    with keel_served(tmp_path_factory.mktemp("contract"), settings, scopes) as served:
        yield served


@pytest.mark.parametrize("version", DOCUMENTS)
def test_every_version_keeps_its_openapi_contract(served: Served, version: str, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(CONFIG),
            "run",
            f"{served.base_url}/openapi.json?version={version}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--continue-on-failure",
            "--header",
            f"Authorization: Bearer {served.token}",
            *([] if version == UNVERSIONED else ["--header", f"Keel-Version: {version}"]),
            "--generation-database",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-20_000:]
    assert "Tested:" in report, report[-5_000:]  # it ran operations, not only loaded the document
