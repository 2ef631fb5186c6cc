"""Negative control for bench/graphql_vs_rest.py's answer check, end to end: the real wrk, with
bench/wrk_answers.py's Lua callback, against a small real HTTP server that answers a 500, a 200
carrying GraphQL `errors`, or a clean 200. The first two must void the run, the last must not.
wrk comes from Debian (scripts/ensure-wrk.sh, run by scripts/test.sh)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bench.wrk_answers import ANSWER_CHECK_LUA, AnswerCounts, answer_failures, parse_answers

ANSWERS: dict[str, tuple[int, bytes]] = {
    "/server-error": (500, b'{"title":"Internal Server Error","status":500}'),
    "/graphql-error": (
        200,
        json.dumps(
            {"data": None, "errors": [{"message": "boom", "extensions": {"code": "INTERNAL"}}]}
        ).encode(),
    ),
    # A clean answer whose data merely mentions errors (escaped inside a string): not an error.
    "/clean": (200, json.dumps({"data": {"profiles": {"bio": 'no "errors": here'}}}).encode()),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status, body = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads wrk's counts, not the server's log."""


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _checked_run(url: str, tmp_path: Path) -> AnswerCounts:
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is missing: run scripts/ensure-wrk.sh (scripts/test.sh does)"
    script = tmp_path / "check.lua"
    script.write_text(ANSWER_CHECK_LUA)
    done = subprocess.run(
        [wrk, "-t1", "-c1", "-d1s", "--timeout", "5s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return parse_answers(done.stdout)


def test_wrk_answer_check_counts_every_500(base_url: str, tmp_path: Path) -> None:
    counts = _checked_run(base_url + "/server-error", tmp_path)
    assert counts.checked > 0
    assert counts.non_2xx == counts.checked
    assert answer_failures("graphql", counts) == [
        f"graphql: {counts.checked} of {counts.checked} answers were not 2xx"
    ]


def test_wrk_answer_check_counts_every_graphql_error_returned_with_200(base_url: str, tmp_path: Path) -> None:
    counts = _checked_run(base_url + "/graphql-error", tmp_path)
    assert counts.checked > 0
    assert counts == AnswerCounts(checked=counts.checked, non_2xx=0, graphql_errors=counts.checked)
    assert answer_failures("graphql", counts) != []


def test_wrk_answer_check_passes_clean_answers(base_url: str, tmp_path: Path) -> None:
    counts = _checked_run(base_url + "/clean", tmp_path)
    assert counts.checked > 0
    assert counts == AnswerCounts(checked=counts.checked, non_2xx=0, graphql_errors=0)
    assert answer_failures("graphql", counts) == []
