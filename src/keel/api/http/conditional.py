"""Conditional requests over HTTP, shared by REST and GraphQL (a query sent with GET)."""

from __future__ import annotations


def etag_matches(header: str, current: str) -> bool:
    """If-None-Match: weak comparison over a list of entity tags, or `*`."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == current:
            return True
    return False
