"""The in-process profile cache: bounded, least recently used first out.

Besides cached profiles it remembers, per invalidated profile, the lowest version it may still
store (a floor). Without the floor, a read that started before a write and finished after it
would put the replaced version back, to be served until it expires.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from keel.service.ports import CachedProfile
from keel.support.lru import BoundedLRU


@dataclass(slots=True)
class _Slot:
    floor: int  # versions below this are not stored again
    entry: CachedProfile | None  # None: nothing to serve, only the floor is left


class BoundedProfileCache:
    def __init__(self, max_entries: int) -> None:
        self._slots: BoundedLRU[str, _Slot] = BoundedLRU(max_entries)

    def get(self, profile_id: str) -> CachedProfile | None:
        slot = self._slots.peek(profile_id)
        if slot is None or slot.entry is None:
            return None
        self._slots.get(profile_id)  # now the most recently used
        return slot.entry

    def put(self, entry: CachedProfile) -> None:
        profile_id = entry.profile.id
        slot = self._slots.peek(profile_id)
        if slot is None:
            self._keep(profile_id, _Slot(0, entry))
            return
        if entry.profile.version < slot.floor:
            return
        if slot.entry is not None and entry.profile.version < slot.entry.profile.version:
            return
        slot.entry = entry
        self._keep(profile_id, slot)

    def invalidate(self, profile_id: str, version: int, *, keep_as_stale: bool = False) -> None:
        slot = self._slots.peek(profile_id) or _Slot(0, None)
        slot.floor = max(slot.floor, version)
        if keep_as_stale and slot.entry is not None:
            slot.entry = replace(slot.entry, stale_only=True)
        else:
            slot.entry = None
        self._keep(profile_id, slot)

    def clear(self) -> None:
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)

    def _keep(self, profile_id: str, slot: _Slot) -> None:
        self._slots.put(profile_id, slot)
