"""The arithmetic of the HTTP server's head limits, and the refusals' bytes, read back by a real
HTTP parser (httptools, the one the server uses)."""

from __future__ import annotations

import json

import httptools
import pytest

from keel.api.http.limits import HeadBudget, HttpLimits, Refusal, body_timeout, head_timeout
from keel.api.http.serving import http_limits
from keel.config import Settings

LIMITS = HttpLimits(header_timeout_seconds=10, body_timeout_seconds=5, max_header_bytes=100, max_headers=3)


class ParsedResponse:
    def __init__(self, data: bytes) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def test_a_head_within_the_limits_passes() -> None:
    budget = HeadBudget(LIMITS)
    assert budget.url(20) is None
    assert budget.header(10, 30) is None  # 20 + 44
    assert budget.header(10, 22) is None  # 100: at the limit, not over it
    assert budget.raw(100) is None


def test_one_byte_over_the_size_is_431() -> None:
    budget = HeadBudget(LIMITS)
    assert budget.url(20) is None
    refusal = budget.header(10, 67)  # 20 + 81 = 101
    assert refusal is not None
    assert (refusal.status, refusal.code) == (431, "request-header-fields-too-large")
    assert "100 bytes" in refusal.detail


def test_the_header_count_is_431_past_the_limit() -> None:
    budget = HeadBudget(LIMITS)
    assert [budget.header(1, 1) for _ in range(3)] == [None, None, None]
    refusal = budget.header(1, 1)
    assert refusal is not None
    assert refusal.status == 431
    assert "at most 3 headers" in refusal.detail


def test_a_request_target_over_the_size_is_414() -> None:
    budget = HeadBudget(LIMITS)
    assert budget.url(60) is None
    refusal = budget.url(41)  # fragments add up
    assert refusal is not None
    assert (refusal.status, refusal.code) == (414, "uri-too-long")


def test_raw_bytes_add_up_across_chunks_and_reset_with_a_new_head() -> None:
    budget = HeadBudget(LIMITS)
    assert budget.raw(60) is None
    over = budget.raw(41)
    assert over is not None
    assert over.status == 431
    budget.reset()
    assert budget.raw(100) is None
    budget.reset()
    assert [budget.header(1, 1) for _ in range(3)] == [None, None, None]


@pytest.mark.parametrize(
    ("refusal", "status", "phrase"),
    [
        (head_timeout(LIMITS), 408, b"Request Timeout"),
        (body_timeout(LIMITS), 408, b"Request Timeout"),
        (Refusal(431, "request-header-fields-too-large", "too big"), 431, b"Request Header Fields Too Large"),
    ],
)
def test_a_refusal_is_a_whole_problem_json_response_that_closes(
    refusal: Refusal, status: int, phrase: bytes
) -> None:
    data = refusal.response()
    assert data.startswith(b"HTTP/1.1 %d %s\r\n" % (status, phrase))
    parsed = ParsedResponse(data)
    assert parsed.complete
    assert parsed.parser.get_status_code() == status
    assert parsed.headers[b"content-type"] == b"application/problem+json"
    assert parsed.headers[b"connection"] == b"close"
    problem = json.loads(parsed.body)
    assert problem == {
        "type": f"urn:keel:problem:{refusal.code}",
        "title": phrase.decode(),
        "status": status,
        "detail": refusal.detail,
    }


def test_timeouts_say_how_long_the_client_had() -> None:
    assert "within 10 seconds" in head_timeout(LIMITS).detail
    assert "within 5 seconds" in body_timeout(LIMITS).detail


def test_the_limits_come_from_the_settings_with_sensible_defaults() -> None:
    assert http_limits(Settings()) == HttpLimits(
        header_timeout_seconds=10.0, body_timeout_seconds=10.0, max_header_bytes=16 * 1024, max_headers=100
    )
    configured = Settings(
        http_header_timeout_seconds=0.5,
        http_body_timeout_seconds=2,
        http_max_header_bytes=4096,
        http_max_headers=20,
    )
    assert http_limits(configured) == HttpLimits(0.5, 2.0, 4096, 20)
    with pytest.raises(ValueError, match="http_header_timeout_seconds"):
        Settings(http_header_timeout_seconds=0)
