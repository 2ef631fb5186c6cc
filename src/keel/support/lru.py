"""A least-recently-used map bounded by its number of entries and, optionally, by the total size
of what it holds. One implementation for Keel's per-process caches: GraphQL's parsed documents
and persisted queries (both bounds), gRPC's encoded profiles and the profile cache (entries)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """`get` makes an entry the most recently used; `peek` does not. `put` keeps a value unless
    it alone is larger than `max_size` (or `max_entries` is 0), then evicts the least recently
    used entries until both bounds hold. Without `size_of`, only the number of entries bounds it."""

    def __init__(
        self,
        max_entries: int,
        max_size: float = math.inf,
        size_of: Callable[[K, V], int] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_size = max_size
        self._size_of = size_of
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.size = 0

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        if self.max_entries <= 0:
            return
        if self._size_of is None:
            self._entries[key] = value
            self._entries.move_to_end(key)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return
        size = self._size_of(key, value)
        if size > self.max_size:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= self._size_of(key, old)
        self._entries[key] = value
        self.size += size
        while len(self._entries) > self.max_entries or self.size > self.max_size:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.size -= self._size_of(evicted_key, evicted)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)
