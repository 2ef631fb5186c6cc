"""DataLoaders: every lookup by key in one GraphQL request goes through these, so N lookups in
one tick of the event loop cost one use-case call.

Emails and links have no loader of their own: they are part of the profile aggregate, which the
port returns whole (the stores read them in the same SQL statement), so a connection of 100
profiles with their emails and links is one `list_profiles` call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from strawberry.dataloader import DataLoader

from keel.domain.api_keys import Principal
from keel.domain.errors import KeelError, Misdirected, NotFound
from keel.domain.profile import Profile
from keel.service.use_cases import MAX_IDS_PER_BATCH, ListFilters, ProfileUseCases

ProfileOrMissing = Profile | None


class ProfileLoaders:
    def __init__(
        self,
        profiles: ProfileUseCases,
        caller: Callable[[], Principal],
        charge: Callable[[str], None],
    ) -> None:
        self._profiles = profiles
        self._caller = caller
        self._charge = charge
        self.by_id: DataLoader[str, ProfileOrMissing] = DataLoader(
            self._load_by_id, max_batch_size=MAX_IDS_PER_BATCH
        )
        # Handles cannot be batched through the port (one handle per search); the loader still
        # answers repeated handles in one request once. The alias limit bounds the rest.
        self.by_handle: DataLoader[str, ProfileOrMissing] = DataLoader(self._load_by_handle)

    def remember(self, profile: Profile) -> None:
        """A profile this request already holds (found by handle, or a mutation's result): later
        lookups of its id in the same request are answered without another call."""
        self.by_id.prime(profile.id, profile, force=True)

    def forget(self, profile_id: str) -> None:
        """A profile this request deleted: later lookups answer that there is none."""
        self.by_id.prime(profile_id, None, force=True)

    async def _load_by_id(self, ids: list[str]) -> Sequence[ProfileOrMissing | BaseException]:
        try:
            principal = self._caller()
            if len(ids) == 1:
                # One id: the single read, which goes through the service's cache (and can serve
                # a stale copy when the database is down), as REST's GET does.
                self._charge("profiles.get")
                try:
                    return [(await self._profiles.read_profile(principal, ids[0])).profile]
                except NotFound:
                    return [None]
            self._charge("profiles.get")
            found = await self._profiles.get_profiles(principal, ids)
        except Misdirected:
            # Some id is another region's: each is answered on its own, so that one foreign id
            # does not fail the other fields of the document (a batch of REST or gRPC is one
            # request, refused whole).
            return await asyncio.gather(*(self._one_by_id(principal, i) for i in ids), return_exceptions=True)
        except KeelError as error:
            return [error] * len(ids)
        return [found.get(profile_id) for profile_id in ids]

    async def _one_by_id(self, principal: Principal, profile_id: str) -> ProfileOrMissing:
        return (await self._profiles.get_profiles(principal, [profile_id])).get(profile_id)

    async def _load_by_handle(self, handles: list[str]) -> Sequence[ProfileOrMissing | BaseException]:
        try:
            principal = self._caller()
        except KeelError as error:
            return [error] * len(handles)
        return await asyncio.gather(
            *(self._one_by_handle(principal, handle) for handle in handles), return_exceptions=True
        )

    async def _one_by_handle(self, principal: Principal, handle: str) -> ProfileOrMissing:
        self._charge("profiles.list")
        page = await self._profiles.list_profiles(principal, ListFilters(handle=handle), limit=1, cursor=None)
        return page.profiles[0] if page.profiles else None
