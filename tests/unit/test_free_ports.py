"""`testkit.ports.free_port`: ports no client socket of the tests can take first."""

from __future__ import annotations

import socket

import pytest
from testkit import ports
from testkit.ports import _ephemeral_start, free_port


def test_ports_are_below_the_ephemeral_range_bindable_and_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(port < _ephemeral_start() for port in ports), ports
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_a_server_holds_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))  # any port: the choice below is made to fall on it first
        held.listen()
        taken = int(held.getsockname()[1])
        spare = next(
            port for port in range(20_000, 32_000) if port not in ports._handed_out and ports._bindable(port)
        )
        choices = iter([taken, taken, spare])
        monkeypatch.setattr("testkit.ports.random.randrange", lambda low, high: next(choices))
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 65_000)
        assert ports.free_port() == spare
