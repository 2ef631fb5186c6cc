"""Automatic persisted queries (the Apollo protocol): a client sends the sha256 of a query; if
Keel does not know it, it answers PersistedQueryNotFound and the client sends the query once with
its hash. Each process keeps the queries it has seen (bounded, least recently used go first);
with Redis (`SharedQueries`, keel.cache.redis_queries) a query registered with any process of
the fleet is found by all of them, so a client behind a load balancer registers it once.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from keel.support.lru import BoundedLRU

NOT_FOUND_MESSAGE = "PersistedQueryNotFound"
NOT_FOUND_CODE = "PERSISTED_QUERY_NOT_FOUND"
NOT_SUPPORTED_MESSAGE = "PersistedQueryNotSupported"
NOT_SUPPORTED_CODE = "PERSISTED_QUERY_NOT_SUPPORTED"


def query_hash(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


# The longest query text a persisted query can have (graphql_max_document_bytes is smaller).
_MAX_QUERY_CHARS = 65_536


class PersistedQueries:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queries: BoundedLRU[str, str] = BoundedLRU(
            capacity, capacity * _MAX_QUERY_CHARS, lambda _, query: len(query)
        )

    def get(self, sha256: str) -> str | None:
        return self._queries.get(sha256)

    def put(self, sha256: str, query: str) -> None:
        """Callers check that `sha256` is the hash of `query` and that the query is valid."""
        self._queries.put(sha256, query)

    def __len__(self) -> int:
        return len(self._queries)


class SharedQueries(Protocol):
    """The fleet's persisted queries: looked up on a miss of this process's own, written when a
    query is registered. Best effort and bounded in time: a failure is a miss (the client sends
    the query again, as the protocol has it), and what it returns is checked against its hash
    and validated like any query before it runs."""

    async def get(self, sha256: str) -> str | None: ...
    async def put(self, sha256: str, query: str) -> None: ...
