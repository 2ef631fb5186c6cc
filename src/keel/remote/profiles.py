"""`ProfileUseCases` and `CallerAuthenticator` over gRPC: what an edge runs REST and GraphQL on."""

from __future__ import annotations

import time
from collections.abc import Sequence

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import FieldError, Unauthenticated, ValidationFailed
from keel.domain.profile import JSONValue, Profile
from keel.profiles.v1 import profiles_pb2 as pb
from keel.remote.core_client import CoreClient
from keel.rpc.messages import document_message, patch_message, profile_from_message
from keel.service.auth import INVALID_KEY, MISSING_KEY, parse_key_id, remember, token_digest
from keel.service.profile_reads import ProfileRead
from keel.service.use_cases import Created, ExpectedVersion, ListFilters, ProfilePage


def _versions(expected: ExpectedVersion) -> list[int]:
    if expected is None:
        return []
    return [expected] if isinstance(expected, int) else sorted(expected)


class RemoteProfiles:
    """Every use case is one call to the core, made on behalf of the edge's caller."""

    def __init__(self, core: CoreClient) -> None:
        self._core = core

    async def read_profile(self, principal: Principal, profile_id: str) -> ProfileRead:
        reply = await self._core.call(
            self._core.profiles.GetProfile,
            pb.GetProfileRequest(id=profile_id),
            name="GetProfile",
            on_behalf_of=principal.key_id,
            idempotent=True,
        )
        return ProfileRead(
            profile_from_message(reply.profile),
            age_seconds=reply.age_seconds,
            stale=reply.stale,
            fresh_seconds=reply.fresh_seconds,
        )

    async def get_profiles(self, principal: Principal, profile_ids: Sequence[str]) -> dict[str, Profile]:
        reply = await self._core.call(
            self._core.profiles.BatchGetProfiles,
            pb.BatchGetProfilesRequest(ids=list(profile_ids)),
            name="BatchGetProfiles",
            on_behalf_of=principal.key_id,
            idempotent=True,
        )
        return {p.id: profile_from_message(p) for p in reply.profiles}

    async def list_profiles(
        self, principal: Principal, filters: ListFilters, *, limit: int, cursor: str | None
    ) -> ProfilePage:
        request = pb.ListProfilesRequest(page_size=limit, page_token=cursor or "")
        if filters.handle is not None:
            request.handle = filters.handle
        if filters.email is not None:
            request.email = filters.email
        if filters.ids is not None:
            request.ids.ids.extend(filters.ids)
            request.ids.SetInParent()  # an empty list is a filter too (that matches nothing)
        if limit == 0:
            # 0 means "the default" on the wire; the use case refuses it, and so must the edge.
            raise ValidationFailed([FieldError("/limit", "must be between 1 and 100")])
        reply = await self._core.call(
            self._core.profiles.ListProfiles,
            request,
            name="ListProfiles",
            on_behalf_of=principal.key_id,
            idempotent=True,
        )
        return ProfilePage([profile_from_message(p) for p in reply.profiles], reply.next_page_token or None)

    async def create_profile(
        self, principal: Principal, document: JSONValue, *, idempotency_key: str | None = None
    ) -> Created:
        reply = await self._core.call(
            self._core.profiles.CreateProfile,
            pb.CreateProfileRequest(profile=document_message(document), request_id=idempotency_key or ""),
            name="CreateProfile",
            on_behalf_of=principal.key_id,
            idempotent=idempotency_key is not None,  # a retry with the same id is answered once
        )
        return Created(profile_from_message(reply.profile), replayed=reply.replayed)

    async def update_profile(
        self,
        principal: Principal,
        profile_id: str,
        patch: JSONValue,
        *,
        expected_version: ExpectedVersion = None,
    ) -> Profile:
        if not isinstance(patch, dict):
            raise ValidationFailed([FieldError("", "a merge patch must be a JSON object")])
        message, mask = patch_message(profile_id, patch)
        reply = await self._core.call(
            self._core.profiles.UpdateProfile,
            pb.UpdateProfileRequest(
                profile=message, update_mask=mask, expected_versions=_versions(expected_version)
            ),
            name="UpdateProfile",
            on_behalf_of=principal.key_id,
            idempotent=False,
        )
        return profile_from_message(reply.profile)

    async def delete_profile(
        self, principal: Principal, profile_id: str, *, expected_version: ExpectedVersion = None
    ) -> None:
        await self._core.call(
            self._core.profiles.DeleteProfile,
            pb.DeleteProfileRequest(id=profile_id, expected_versions=_versions(expected_version)),
            name="DeleteProfile",
            on_behalf_of=principal.key_id,
            idempotent=False,
        )


class RemoteAuthenticator:
    """Resolves API keys through the core, caching answers like the core's own authenticator:
    known keys for `ttl` seconds, unknown ones briefly, apart."""

    def __init__(
        self, core: CoreClient, *, ttl: float = 60.0, negative_ttl: float = 5.0, max_entries: int = 10_000
    ) -> None:
        self._core = core
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._known: dict[str, tuple[Principal, float]] = {}
        self._unknown: dict[str, float] = {}

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated(MISSING_KEY)
        if parse_key_id(token) is None:
            raise Unauthenticated(INVALID_KEY)
        digest = token_digest(token)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        unknown_until = self._unknown.get(digest)
        if unknown_until is not None and unknown_until > now:
            raise Unauthenticated(INVALID_KEY)
        try:
            reply = await self._core.call(
                self._core.callers.GetCaller,
                pb.GetCallerRequest(token=token),
                name="GetCaller",
                on_behalf_of=None,
                idempotent=True,
            )
        except Unauthenticated:
            remember(self._unknown, digest, now + self._negative_ttl, self._max_entries)
            raise
        principal = Principal(
            key_id=reply.key_id,
            scopes=frozenset(Scope(s) for s in reply.scopes if s in Scope._value2member_map_),
            api_version=reply.api_version,
            plan=reply.plan,
        )
        remember(self._known, digest, (principal, now + self._ttl), self._max_entries)
        return principal
