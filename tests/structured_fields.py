"""The rate-limit headers as a client reads them: Structured Field lists (RFC 9651) of names (sf-
strings), each with parameters, parsed by http_sf and checked to hold nothing else."""

from __future__ import annotations

import http_sf
from http_sf.types import BareItemType


def parse_named_list(value: str) -> list[tuple[str, dict[str, BareItemType]]]:
    """`value`'s members as (name, parameters); an assertion fails if it is not such a list."""
    parsed = http_sf.parse(value.encode(), tltype="list")
    assert isinstance(parsed, list), parsed
    members: list[tuple[str, dict[str, BareItemType]]] = []
    for member in parsed:
        assert isinstance(member, tuple), member
        name, params = member
        assert isinstance(name, str), member
        members.append((name, params))
    return members
