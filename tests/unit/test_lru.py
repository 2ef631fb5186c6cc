"""`keel.support.lru.BoundedLRU` bounded by entries only (the profile cache, gRPC's encoded
profiles); the size-bounded use is tested with GraphQL's caches (test_graphql_limits.py)."""

from __future__ import annotations

from keel.support.lru import BoundedLRU


def test_the_least_recently_used_entry_goes_first() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the least recently used
    lru.put("c", 3)
    assert (lru.peek("a"), lru.peek("b"), lru.peek("c")) == (1, None, 3)
    assert len(lru) == 2


def test_peek_does_not_make_an_entry_recent_and_put_does() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.peek("a") == 1  # still the least recently used
    lru.put("c", 3)
    assert lru.peek("a") is None
    lru.put("b", 20)  # replacing makes it the most recent
    lru.put("d", 4)
    assert (lru.peek("b"), lru.peek("c"), lru.peek("d")) == (20, None, 4)


def test_no_room_keeps_nothing_and_clear_empties() -> None:
    none: BoundedLRU[str, int] = BoundedLRU(0)
    none.put("a", 1)
    assert none.get("a") is None
    assert len(none) == 0
    sized: BoundedLRU[str, bytes] = BoundedLRU(10, 4, lambda key, value: len(value))
    sized.put("a", b"123")
    sized.clear()
    assert len(sized) == 0
    assert sized.size == 0
