"""Automatic persisted queries (the Apollo protocol): a client sends the sha256 of a query; if
this process does not know it, it answers PersistedQueryNotFound and the client sends the query
once with its hash. Bounded (least recently used go first); per process, so behind a load
balancer a client may have to register a query once per process, which the protocol handles.
"""

from __future__ import annotations

import hashlib

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
