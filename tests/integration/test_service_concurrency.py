"""Races through the real use cases on each real store: what a client sees when writers collide."""

from __future__ import annotations

import asyncio

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import ConcurrentModification, Conflict, NotFound
from keel.domain.profile import JSONObject
from keel.service.attributes import AttributePolicy
from keel.service.clock import SystemClock
from keel.service.ports import Store
from keel.service.profiles import ProfileService
from keel.service.use_cases import ListFilters

WRITER = Principal("writer", frozenset({Scope.PROFILES_READ, Scope.PROFILES_WRITE}), "2026-11-28")


def service(store: Store) -> ProfileService:
    return ProfileService(store, SystemClock(), AttributePolicy(), "eu1")


def document(handle: str, *emails: str) -> JSONObject:
    return {
        "handle": handle,
        "emails": [{"address": e, "primary": i == 0} for i, e in enumerate(emails)],
    }


async def test_patches_without_if_match_are_reapplied_not_refused(store: Store) -> None:
    # As many racing writers as the service's write attempts (3): each lost race means another
    # writer committed, so each writer loses at most twice and every patch must be applied.
    profiles = service(store)
    created = (await profiles.create_profile(WRITER, document("racer", "r@example.com"))).profile
    writers = 3
    await asyncio.gather(
        *(profiles.update_profile(WRITER, created.id, {"attributes": {f"k{n}": n}}) for n in range(writers))
    )
    final = await profiles.get_profile(WRITER, created.id)
    assert final.version == 1 + writers
    assert final.fields.attributes == {f"k{n}": n for n in range(writers)}


async def test_patches_beyond_the_retries_are_applied_or_refused_never_lost(store: Store) -> None:
    # More writers than attempts: some may run out of retries (409 with Retry-After, the
    # documented answer); every one is either applied or refused, and nothing applied is lost.
    profiles = service(store)
    created = (await profiles.create_profile(WRITER, document("racer", "r@example.com"))).profile

    async def patch(n: int) -> str:
        try:
            await profiles.update_profile(WRITER, created.id, {"attributes": {f"k{n}": n}})
        except ConcurrentModification:
            return "retry"
        return "ok"

    outcomes = await asyncio.gather(*(patch(n) for n in range(8)))
    final = await profiles.get_profile(WRITER, created.id)
    applied = {f"k{n}": n for n, outcome in enumerate(outcomes) if outcome == "ok"}
    assert len(applied) >= 3  # a refused writer lost three races, each to another commit
    assert final.version == 1 + len(applied)
    assert final.fields.attributes == applied


async def test_a_delete_racing_patches_never_fails_a_precondition_nobody_set(store: Store) -> None:
    profiles = service(store)
    created = (await profiles.create_profile(WRITER, document("doomed", "d@example.com"))).profile

    async def patch() -> str:
        try:
            await profiles.update_profile(WRITER, created.id, {"bio": "still here"})
        except NotFound:
            return "gone"
        return "ok"

    results = await asyncio.gather(
        profiles.delete_profile(WRITER, created.id), *(patch() for _ in range(4)), return_exceptions=True
    )
    assert results[0] is None, results[0]
    assert all(r in ("ok", "gone") for r in results[1:]), results
    assert (await profiles.list_profiles(WRITER, ListFilters(), limit=10, cursor=None)).profiles == []


async def test_crossed_emails_conflict_cleanly(store: Store) -> None:
    profiles = service(store)

    async def create(handle: str, *emails: str) -> str:
        try:
            await profiles.create_profile(WRITER, document(handle, *emails))
        except Conflict:
            return "conflict"
        return "created"

    for n in range(10):
        x, y = f"x{n}@example.com", f"y{n}@example.com"
        outcomes = await asyncio.gather(create(f"a_{n}", x, y), create(f"b_{n}", y, x))
        assert sorted(outcomes) == ["conflict", "created"]
