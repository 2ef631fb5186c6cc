from __future__ import annotations

from keel.api.http.client_address import client_address


def _scope(peer: str, *forwarded: str) -> dict[str, object]:
    return {"client": (peer, 5000), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address(_scope("10.0.0.1", "6.6.6.6"), 0) == "10.0.0.1"


def test_one_trusted_hop_takes_the_entry_it_appended() -> None:
    assert client_address(_scope("10.0.0.1", "6.6.6.6, 203.0.113.7"), 1) == "203.0.113.7"


def test_two_trusted_hops_across_repeated_headers() -> None:
    scope = _scope("10.0.0.2", "6.6.6.6, 203.0.113.7", "10.0.0.1")
    assert client_address(scope, 2) == "203.0.113.7"


def test_a_short_chain_is_not_trusted() -> None:
    assert client_address(_scope("10.0.0.1", "6.6.6.6"), 3) == "10.0.0.1"
