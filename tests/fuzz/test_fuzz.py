"""The fuzz targets of fuzz_inputs.py, each for a bounded time, from the seed corpus of inputs that
crashed Keel before (issue 13). A crash fails the test with the input that caused it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SECONDS_PER_TARGET = 6


def _fuzz(target: str, corpus: str, work: Path) -> subprocess.CompletedProcess[str]:
    found = work / "found"  # what the run adds to the corpus: kept out of the repository
    found.mkdir()
    # Through `sh`, as its child, not this process's: libFuzzer's `-rss_limit_mb` reads the peak
    # RSS (getrusage), which Linux carries from a parent into a forked child across exec. A child
    # of this pytest process would start "using" pytest's RSS (over 2 GB by the time these run in
    # the whole suite) and die of out-of-memory at its first input; sh's child starts clean.
    return subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$@"; exit $?',
            "fuzz",
            sys.executable,
            str(HERE / "fuzz_inputs.py"),
            target,
            f"-max_total_time={SECONDS_PER_TARGET}",
            "-rss_limit_mb=2048",
            "-seed=1",
            f"-artifact_prefix={work}/",
            str(found),
            str(HERE / "corpus" / corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_TARGET * 10,
        check=False,
    )


@pytest.mark.parametrize("target", ["profile_document", "cursor", "entity_tag", "strict_json"])
def test_no_input_crashes_a_parser(target: str, tmp_path: Path) -> None:
    run = _fuzz(target, target, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done" in run.stderr  # the fuzzer ran to its time limit, not stopped before starting


def test_the_fuzzer_finds_the_entity_tag_crash_of_issue_13(tmp_path: Path) -> None:
    """Negative control: the parser as it was crashes on the corpus, and the run says so."""
    run = _fuzz("entity_tag_before_the_fix", "entity_tag", tmp_path)
    assert run.returncode != 0
    assert "ValueError" in run.stdout + run.stderr
    assert list(tmp_path.glob("crash-*"))
