"""Automatic persisted queries (the Apollo protocol): a client sends the sha256 of a query; if
this process does not know it, it answers PersistedQueryNotFound and the client sends the query
once with its hash. Bounded (least recently used go first); per process, so behind a load
balancer a client may have to register a query once per process, which the protocol handles.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

NOT_FOUND_MESSAGE = "PersistedQueryNotFound"
NOT_FOUND_CODE = "PERSISTED_QUERY_NOT_FOUND"
NOT_SUPPORTED_MESSAGE = "PersistedQueryNotSupported"
NOT_SUPPORTED_CODE = "PERSISTED_QUERY_NOT_SUPPORTED"


def query_hash(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


class PersistedQueries:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queries: OrderedDict[str, str] = OrderedDict()

    def get(self, sha256: str) -> str | None:
        query = self._queries.get(sha256)
        if query is not None:
            self._queries.move_to_end(sha256)
        return query

    def put(self, sha256: str, query: str) -> None:
        """Callers check that `sha256` is the hash of `query` and that the query is valid."""
        if self.capacity <= 0:
            return
        self._queries[sha256] = query
        self._queries.move_to_end(sha256)
        while len(self._queries) > self.capacity:
            self._queries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._queries)
