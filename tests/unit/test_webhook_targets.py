"""Which addresses webhooks may reach: IPv6 forms that carry an IPv4 address (IPv4-mapped,
6to4, NAT64, IPv4-compatible) are judged by the IPv4 address they carry, so a private IPv4
address cannot be reached by writing it as IPv6."""

from __future__ import annotations

import pytest

from keel.service.webhook_targets import is_public_address
from keel.webhooks.http_sender import interleaved


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:127.0.0.1",  # IPv4-mapped
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 (well-known prefix) of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::c0a8:1",  # NAT64 of 192.168.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215): the operator's own translator
        "64:ff9b:1:ffff::808:808",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "::10.0.0.1",
        "::a9fe:a9fe",
        "::",
        "::1",
    ],
)
def test_an_ipv6_form_carrying_a_non_public_ipv4_address_is_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "2002:5db8:d70e::", "64:ff9b::5db8:d70e"],
)
def test_public_addresses_stay_public_in_every_form(address: str) -> None:
    assert is_public_address(address)


def test_addresses_are_tried_in_the_resolvers_order_with_families_alternating() -> None:
    assert interleaved(["2001:db8::1", "2001:db8::2", "192.0.2.1"]) == [
        "2001:db8::1",
        "192.0.2.1",
        "2001:db8::2",
    ]
    assert interleaved(["192.0.2.1", "192.0.2.2", "2001:db8::1"]) == ["192.0.2.1", "2001:db8::1", "192.0.2.2"]
    assert interleaved(["192.0.2.2", "192.0.2.1"]) == ["192.0.2.2", "192.0.2.1"]
    assert interleaved([]) == []
