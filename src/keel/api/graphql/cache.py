"""A least-recently-used map bounded by its number of entries and by the total size of what it
holds, for the per-process caches of GraphQL: parsed documents and persisted queries."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    def __init__(self, max_entries: int, max_size: int, size_of: Callable[[K, V], int]) -> None:
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

    def put(self, key: K, value: V) -> None:
        """Keeps `value` unless it alone is larger than the cache; evicts the least recently used
        entries until both bounds hold."""
        size = self._size_of(key, value)
        if self.max_entries <= 0 or size > self.max_size:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= self._size_of(key, old)
        self._entries[key] = value
        self.size += size
        while len(self._entries) > self.max_entries or self.size > self.max_size:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.size -= self._size_of(evicted_key, evicted)

    def __len__(self) -> int:
        return len(self._entries)
