"""What keel.api.http.protocol relies on inside uvicorn and httptools, checked so that an
upgrade that moves any of it fails here, loudly, instead of silently dropping the limits.

The protocol subclasses uvicorn's HttpToolsProtocol (uvicorn has no such limits of its own; the
reason is in the protocol's docstring). On an upgrade: re-read uvicorn's httptools_impl.py
against protocol.py, run tests/e2e/test_slow_and_huge_requests.py, then update the pins below.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import httptools
import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from keel.api.http.limits import HttpLimits
from keel.api.http.protocol import LimitedHttpToolsProtocol, limited_protocol

REPO = Path(__file__).resolve().parents[2]
LIMITS = HttpLimits(header_timeout_seconds=1, body_timeout_seconds=1, max_header_bytes=1024, max_headers=10)


def _pinned(name: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]  # before a hash's line continuation
    raise AssertionError(f"{name} is not pinned in requirements.lock")


def test_uvicorn_and_httptools_are_the_reviewed_versions() -> None:
    # The versions protocol.py was written against; a new one needs the review above.
    assert uvicorn.__version__ == _pinned("uvicorn") == "0.54.0"
    assert httptools.__version__ == _pinned("httptools") == "0.9.0"


@pytest.mark.parametrize(
    ("method", "parameters"),
    [
        ("__init__", ["self", "config", "server_state", "app_state", "_loop"]),
        ("connection_made", ["self", "transport"]),
        ("connection_lost", ["self", "exc"]),
        ("data_received", ["self", "data"]),
        ("send_400_response", ["self", "msg"]),
        ("on_message_begin", ["self"]),
        ("on_url", ["self", "url"]),
        ("on_header", ["self", "name", "value"]),
        ("on_headers_complete", ["self"]),
        ("on_body", ["self", "body"]),
        ("on_message_complete", ["self"]),
        ("on_response_complete", ["self"]),
    ],
)
def test_the_overridden_methods_keep_their_signatures(method: str, parameters: list[str]) -> None:
    assert list(inspect.signature(getattr(HttpToolsProtocol, method)).parameters) == parameters
    # ... and the subclass overrides each of them (a rename upstream would leave ours dead).
    assert method in vars(LimitedHttpToolsProtocol)


def test_a_parser_error_is_answered_through_send_400_response() -> None:
    # A refusal raised from a parser callback reaches the client only this way: httptools wraps
    # the callback's exception in an HttpParserCallbackError, and uvicorn's data_received
    # answers any HttpParserError by calling send_400_response, which the subclass overrides.
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)
    source = inspect.getsource(HttpToolsProtocol.data_received)
    assert "except httptools.HttpParserError" in source
    assert "self.send_400_response(" in source


def test_on_response_complete_starts_pipelined_requests_from_self_pipeline() -> None:
    source = inspect.getsource(HttpToolsProtocol.on_response_complete)
    assert "self.pipeline" in source


def test_the_cycle_and_flow_attributes_exist() -> None:
    cycle_init = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in (
        "self.response_started",
        "self.response_complete",
        "self.disconnected",
        "self.message_event",
    ):
        assert f"{attribute} =" in cycle_init, attribute
    assert "self.read_paused" in inspect.getsource(FlowControl.__init__)
    assert callable(FlowControl.resume_reading)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_uvicorn_takes_the_class_as_its_http_protocol(loop: asyncio.AbstractEventLoop) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never called")

    protocol_class = limited_protocol(LIMITS)
    config = Config(app=app, http=protocol_class, loop="none")
    config.load()
    assert config.http_protocol_class is protocol_class
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    assert protocol.limits == LIMITS
    # The per-connection state the subclass reads and writes.
    for attribute in ("transport", "flow", "cycle", "pipeline", "loop", "parser"):
        assert hasattr(protocol, attribute), attribute
    assert protocol.loop is loop
