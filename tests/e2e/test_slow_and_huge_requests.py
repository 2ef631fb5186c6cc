"""Slow and huge requests against `keel serve` in its own process, over raw sockets: the HTTP
server bounds how long a request head and each piece of a body may take, and how big a head
may be (keel.api.http.protocol).

Two servers: `hasty` with half-second timeouts, for the tests that wait for a timeout, and
`patient` with the default ten seconds, for the tests that must not race one (sizes,
keep-alive). No test asserts how fast the server acts: only that it answers or closes before
a generous socket timeout, which fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit.health import wait_healthy
from testkit.ports import free_port

from tests.e2e.test_served_process import _keel

# Far above any timeout the servers are configured with: reaching it means the server did not act.
GENEROUS_SECONDS = 10.0


@dataclass
class Served:
    port: int
    token: str
    log_path: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=GENEROUS_SECONDS)
        sock.settimeout(GENEROUS_SECONDS)
        return sock

    def log_text(self) -> str:
        return self.log_path.read_text()


def _serve(directory: Path, extra_env: dict[str, str]) -> Iterator[Served]:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{directory / 'keel.sqlite3'}",
        "KEEL_PORT": str(free_port()),
        **extra_env,
    }
    _keel(env, "migrate")
    token = _keel(env, "keys", "create", "--scopes", "profiles:read,profiles:write", "--quiet").strip()
    log_path = directory / "keel.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "keel", "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_healthy(f"http://127.0.0.1:{env['KEEL_PORT']}", process, log_path)
        yield Served(int(env["KEEL_PORT"]), token, log_path)
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def hasty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(
        tmp_path_factory.mktemp("hasty"),
        {
            "KEEL_HTTP_HEADER_TIMEOUT_SECONDS": "0.5",
            "KEEL_HTTP_BODY_TIMEOUT_SECONDS": "0.5",
            # Far longer than the head timeout: an idle keep-alive wait is the keep-alive's to end.
            "KEEL_HTTP_KEEP_ALIVE_SECONDS": "60",
        },
    )


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("patient"), {})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, object]:
        assert self.headers["content-type"] == "application/problem+json"
        document: dict[str, object] = json.loads(self.body)
        return document


def read_response(sock: socket.socket) -> Response:
    """One response with a Content-Length, read off the socket; fails if the server closes or
    stays silent before it is whole. Reads no byte past it: a pipelined next response stays on
    the socket for the next call (the head is read a byte at a time, the body to its length)."""
    buffer = b""
    while not buffer.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed before a response head: {buffer!r}"
        buffer += chunk
    head, body = buffer[:-4], b""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "closed in the middle of a response body"
        body += chunk
    return Response(int(status_line.split(" ")[1]), headers, body)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def assert_refused_and_closed(sock: socket.socket, status: int, code: str) -> dict[str, object]:
    response = read_response(sock)
    assert response.status == status, response
    assert response.headers["connection"] == "close"
    problem = response.problem()
    assert problem["status"] == status
    assert problem["type"] == f"urn:keel:problem:{code}"
    assert read_until_closed(sock) == b""
    return problem


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: keel.test", *headers, "", ""]).encode()


# Timeouts (hasty)


def test_a_connection_that_sends_nothing_is_closed(hasty: Served) -> None:
    with hasty.connect() as sock:
        assert read_until_closed(sock) == b""


def test_many_silent_connections_are_all_closed(hasty: Served) -> None:
    socks = [hasty.connect() for _ in range(50)]
    deadline = time.monotonic() + GENEROUS_SECONDS  # for all of them together
    try:
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert read_until_closed(sock) == b""
    finally:
        for sock in socks:
            sock.close()


def test_a_head_that_stops_half_way_gets_408_and_is_closed(hasty: Served) -> None:
    with hasty.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: keel.test\r\n")
        problem = assert_refused_and_closed(sock, 408, "request-timeout")
        assert "headers must arrive within 0.5 seconds" in str(problem["detail"])


def test_a_head_dripped_line_by_line_is_still_bounded(hasty: Served) -> None:
    # Each line arrives well inside the timeout; only the head as a whole is late. Bytes do not
    # restart the clock, so the server ends the connection while the client is still dripping.
    with hasty.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sent = 0
        try:
            while sent < 1_000:  # a bound by count: the drip cannot go on forever either way
                sock.sendall(f"X-Drip-{sent}: 1\r\n".encode())
                sent += 1
                # Waits for the server's answer up to a tenth of the timeout; not a measure of
                # anything, only the pace of the drip.
                sock.settimeout(0.05)
                try:
                    answer = sock.recv(65536)
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("the server kept reading a head dripped for 1,000 lines")
        except (BrokenPipeError, ConnectionResetError):
            answer = b""  # closed before we read its answer: closed all the same
        sock.settimeout(GENEROUS_SECONDS)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        read_until_closed(sock)


def test_an_idle_keep_alive_connection_outlives_the_head_timeout(hasty: Served) -> None:
    # The idle wait between two requests is bounded by the keep-alive timeout (60 s here), not
    # by the head timeout (0.5 s): a load balancer that reuses its connections must not find
    # them closed after every pause. The sleep is the claim: idle for twice the head timeout.
    with hasty.connect() as sock:
        sock.sendall(get("/healthz"))
        assert read_response(sock).status == 200
        time.sleep(1.0)
        sock.sendall(get("/healthz"))
        assert read_response(sock).status == 200


def test_a_second_head_dripped_after_an_idle_wait_is_still_bounded(hasty: Served) -> None:
    # On a keep-alive connection the head's clock starts at its first byte, after the idle wait:
    # dripping the next head is bounded as the first one is.
    with hasty.connect() as sock:
        sock.sendall(get("/healthz"))
        assert read_response(sock).status == 200
        time.sleep(1.0)  # idle past the head timeout, as above
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: keel.test\r\n")
        problem = assert_refused_and_closed(sock, 408, "request-timeout")
        assert "headers must arrive within 0.5 seconds" in str(problem["detail"])


def stall_a_body(served: Served, path: str, request_id: str) -> dict[str, object]:
    """Sends a head and a piece of a 1000-byte body, then nothing; returns the refusal."""
    with served.connect() as sock:
        sock.sendall(
            "\r\n".join(
                [
                    f"POST {path} HTTP/1.1",
                    "Host: keel.test",
                    f"Authorization: Bearer {served.token}",
                    f"X-Request-ID: {request_id}",
                    "Content-Type: application/json",
                    "Content-Length: 1000",
                    "",
                    '{"handle": "half',
                ]
            ).encode()
        )
        return assert_refused_and_closed(sock, 408, "request-timeout")


def access_line(served: Served, request_id: str) -> dict[str, object]:
    """The app's access-log line of a request, once it is written (the app learns of the
    timeout after the client has its answer)."""
    deadline = time.monotonic() + GENEROUS_SECONDS
    while time.monotonic() < deadline:
        for line in served.log_text().splitlines():
            entry: dict[str, object] = json.loads(line)
            if entry.get("request_id") == request_id and entry.get("event") == "request":
                return entry
        time.sleep(0.05)
    pytest.fail(f"no access-log line for {request_id}")


@pytest.mark.parametrize("path", ["/v1/profiles", "/graphql"])
def test_a_body_that_stops_half_way_gets_408_and_is_closed(hasty: Served, path: str) -> None:
    request_id = f"stalled-body-{path.strip('/').replace('/', '-')}"
    problem = stall_a_body(hasty, path, request_id)
    assert "body must arrive within 0.5 seconds" in str(problem["detail"])
    # The app saw the client go; that is not Keel's failure: no 500, no error logged.
    assert access_line(hasty, request_id)["status"] != 500
    errors = [line for line in hasty.log_text().splitlines() if request_id in line and '"error"' in line]
    assert not errors, errors


# Sizes and keep-alive (patient)


def test_a_64_kib_header_gets_431(patient: Served) -> None:
    with patient.connect() as sock:
        sock.sendall(get("/healthz", "X-Big: " + "a" * 64 * 1024))
        problem = assert_refused_and_closed(sock, 431, "request-header-fields-too-large")
        assert "limited to 16384 bytes" in str(problem["detail"])


def test_a_header_line_that_never_ends_gets_431_without_waiting_for_its_end(patient: Served) -> None:
    # httptools holds a header line until it ends; the server counts the bytes as they come.
    with patient.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 64 * 1024)
        assert_refused_and_closed(sock, 431, "request-header-fields-too-large")


def test_200_headers_get_431(patient: Served) -> None:
    with patient.connect() as sock:
        sock.sendall(get("/healthz", *(f"X-Many-{n}: {n}" for n in range(200))))
        problem = assert_refused_and_closed(sock, 431, "request-header-fields-too-large")
        assert "at most 100 headers" in str(problem["detail"])


def test_a_huge_request_target_gets_414(patient: Served) -> None:
    with patient.connect() as sock:
        sock.sendall(get("/healthz?" + "q" * 64 * 1024))
        assert_refused_and_closed(sock, 414, "uri-too-long")


def test_requests_within_the_limits_share_a_keep_alive_connection(patient: Served) -> None:
    body = json.dumps({"handle": "keep_alive", "emails": [{"address": "ka@example.com", "primary": True}]})
    near_limit = [f"X-Fill-{n}: {'f' * 100}" for n in range(90)]  # 90 headers, ~10 KiB
    with patient.connect() as sock:
        sock.sendall(get("/healthz", *near_limit))
        assert read_response(sock).status == 200
        sock.sendall(
            "\r\n".join(
                [
                    "POST /v1/profiles HTTP/1.1",
                    "Host: keel.test",
                    f"Authorization: Bearer {patient.token}",
                    "Content-Type: application/json",
                    f"Content-Length: {len(body)}",
                    "",
                    body,
                ]
            ).encode()
        )
        created = read_response(sock)
        assert created.status == 201, created.body
        sock.sendall(get("/healthz"))
        assert read_response(sock).status == 200


def test_pipelined_requests_are_all_answered(patient: Served) -> None:
    with patient.connect() as sock:
        sock.sendall(get("/healthz") * 3)
        assert [read_response(sock).status for _ in range(3)] == [200, 200, 200]
