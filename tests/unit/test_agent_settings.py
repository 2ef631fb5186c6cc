"""KEEL_AGENT_PORT is refused where it cannot work: on a port another listener of the process
takes (the image's management port, 9100, once was the compose file's agent port), or with load
shedding off (there is no adaptive limit to report)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keel.config import Settings


def test_the_agent_port_must_be_a_port_of_its_own() -> None:
    assert Settings(agent_port=9200, management_port=9100).agent_port == 9200
    for taken in ({"management_port": 9100}, {"port": 9100}, {"grpc_port": 9100}):
        with pytest.raises(ValidationError, match="a port of its own"):
            Settings(agent_port=9100, **taken)  # type: ignore[arg-type]


def test_the_agent_port_needs_load_shedding() -> None:
    with pytest.raises(ValidationError, match="load shedding"):
        Settings(agent_port=9200, load_shedding_enabled=False)
