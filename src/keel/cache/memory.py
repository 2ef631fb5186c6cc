"""The in-process profile cache: bounded, least recently used first out.

Besides cached profiles it remembers, per invalidated profile, the lowest version it may still
store (a floor). Without the floor, a read that started before a write and finished after it
would put the replaced version back, to be served until it expires.
"""

from __future__ import annotations

from collections import OrderedDict

from keel.service.ports import CachedProfile


class BoundedProfileCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        # A cached profile, or an int: the floor left by an invalidation.
        self._entries: OrderedDict[str, CachedProfile | int] = OrderedDict()

    def get(self, profile_id: str) -> CachedProfile | None:
        entry = self._entries.get(profile_id)
        if not isinstance(entry, CachedProfile):
            return None
        self._entries.move_to_end(profile_id)
        return entry

    def put(self, entry: CachedProfile) -> None:
        profile_id = entry.profile.id
        current = self._entries.get(profile_id)
        if isinstance(current, int) and entry.profile.version < current:
            return
        if isinstance(current, CachedProfile) and entry.profile.version < current.profile.version:
            return
        self._store(profile_id, entry)

    def invalidate(self, profile_id: str, version: int) -> None:
        current = self._entries.get(profile_id)
        if isinstance(current, int) and current >= version:
            return
        self._store(profile_id, version)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _store(self, profile_id: str, value: CachedProfile | int) -> None:
        self._entries[profile_id] = value
        self._entries.move_to_end(profile_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
