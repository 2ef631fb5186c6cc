"""The address a request comes from, for limiting callers without an API key.

`X-Forwarded-For` is honoured only through the configured number of trusted proxy hops,
counted from the right: each trusted proxy appends the address it received the request from,
so the entry just left of the trusted ones is the client. Entries further left were written by
the client itself and can say anything, which is why the leftmost value is never used.
"""

from __future__ import annotations

from starlette.types import Scope


def client_address(scope: Scope, trusted_hops: int) -> str:
    peer = scope.get("client")
    peer_address = peer[0] if peer else "unknown"
    if trusted_hops == 0:
        return peer_address
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded += [part.strip() for part in value.decode("latin-1").split(",")]
    chain = [*forwarded, peer_address]
    if len(chain) <= trusted_hops:
        # Fewer entries than trusted proxies: the request did not come through them all, and
        # nothing in the header can be trusted.
        return peer_address
    candidate = chain[-(trusted_hops + 1)]
    return candidate if candidate and len(candidate) <= 64 and candidate.isprintable() else peer_address
