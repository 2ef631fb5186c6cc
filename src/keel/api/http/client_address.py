"""The address a request comes from, for limiting callers without an API key.

`X-Forwarded-For` is honoured only through the configured number of trusted proxy hops,
counted from the right: each trusted proxy appends the address it received the request from,
so the entry just left of the trusted ones is the client. Entries further left were written by
the client itself and can say anything, which is why the leftmost value is never used.

Addresses are parsed, so that one client cannot spread itself over many buckets by spelling
(ports, case, brackets); IPv6 clients are grouped by /64, the block one subscriber usually
holds, or rotating through it would give a fresh bucket per address.
"""

from __future__ import annotations

import ipaddress

from starlette.types import Scope


def client_address(scope: Scope, trusted_hops: int) -> str:
    peer = scope.get("client")
    peer_address = _normalized(peer[0]) if peer else None
    fallback = peer_address or "unknown"
    if trusted_hops == 0:
        return fallback
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded += [part.strip() for part in value.decode("latin-1").split(",")]
    if len(forwarded) < trusted_hops:
        # Fewer entries than trusted proxies: the request did not come through them all, and
        # nothing in the header can be trusted.
        return fallback
    return _normalized(forwarded[-trusted_hops]) or fallback


def _normalized(text: str) -> str | None:
    candidate = text.strip()
    if candidate.startswith("[") and "]" in candidate:  # [v6]:port
        candidate = candidate[1 : candidate.index("]")]
    elif candidate.count(":") == 1:  # v4:port
        candidate = candidate.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
