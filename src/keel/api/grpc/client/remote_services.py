"""`ProfileUseCases` and `CallerAuthenticator` over gRPC: what an edge runs REST and GraphQL on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from keel.api.grpc.client.core_client import CoreClient
from keel.api.grpc.wire.messages import (
    document_message,
    from_unix_micros,
    patch_message,
    profile_from_message,
)
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import FieldError, Unauthenticated, ValidationFailed
from keel.domain.profile import JSONValue, Profile
from keel.service.auth import KeyAnswers, credentials
from keel.service.profile_reads import ProfileRead
from keel.service.residency import REGION_RULE, is_region
from keel.service.use_cases import MAX_PAGE_SIZE, Created, ExpectedVersion, ListFilters, ProfilePage

_INT64_MAX = 2**63 - 1
_NO_VERSION = -1  # no profile is ever at it: stands for versions the wire cannot carry


def _versions(expected: ExpectedVersion) -> list[int]:
    """The expected versions as int64s. A version beyond int64 can match no profile: it is sent
    as one that cannot match either, so the precondition still fails as it would in process."""
    if expected is None:
        return []
    versions = [expected] if isinstance(expected, int) else sorted(expected)
    return sorted({v if 0 <= v <= _INT64_MAX else _NO_VERSION for v in versions})


class RemoteProfiles:
    """Every use case is one call to the core, made on behalf of the edge's caller."""

    def __init__(self, core: CoreClient) -> None:
        self._core = core

    async def read_profile(self, principal: Principal, profile_id: str) -> ProfileRead:
        reply = await self._core.call(
            self._core.profiles.GetProfile,
            pb.GetProfileRequest(id=profile_id),
            name="GetProfile",
            on_behalf_of=principal,
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
            on_behalf_of=principal,
            idempotent=True,
        )
        return {p.id: profile_from_message(p) for p in reply.profiles}

    async def list_profiles(
        self, principal: Principal, filters: ListFilters, *, limit: int, cursor: str | None
    ) -> ProfilePage:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            # Checked here as the use case checks it: on the wire 0 means "the default", and
            # the field is an int32.
            raise ValidationFailed([FieldError("/limit", f"must be between 1 and {MAX_PAGE_SIZE}")])
        request = pb.ListProfilesRequest(page_size=limit, page_token=cursor or "")
        if filters.handle is not None:
            request.handle = filters.handle
        if filters.email is not None:
            request.email = filters.email
        if filters.ids is not None:
            request.ids.ids.extend(filters.ids)
            request.ids.SetInParent()  # an empty list is a filter too (that matches nothing)
        reply = await self._core.call(
            self._core.profiles.ListProfiles,
            request,
            name="ListProfiles",
            on_behalf_of=principal,
            idempotent=True,
        )
        return ProfilePage([profile_from_message(p) for p in reply.profiles], reply.next_page_token or None)

    async def handle_available(self, principal: Principal, handle: str) -> bool:
        reply = await self._core.call(
            self._core.profiles.CheckHandle,
            pb.CheckHandleRequest(handle=handle),
            name="CheckHandle",
            on_behalf_of=principal,
            idempotent=True,
        )
        return reply.available

    async def create_profile(
        self, principal: Principal, document: JSONValue, *, idempotency_key: str | None = None
    ) -> Created:
        reply = await self._core.call(
            self._core.profiles.CreateProfile,
            pb.CreateProfileRequest(
                profile=document_message(_without_region(document)),
                request_id=idempotency_key or "",
                region=_region_of_create(document),
            ),
            name="CreateProfile",
            on_behalf_of=principal,
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
            on_behalf_of=principal,
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
            on_behalf_of=principal,
            idempotent=False,
        )


class RemoteAuthenticator:
    """Resolves API keys through the core, caching the answers as the core itself does
    (`KeyAnswers`). Only the key id and the token's SHA-256 go to the core, never the token; the
    principal keeps the digest, the proof the edge shows when it acts for this caller."""

    def __init__(
        self, core: CoreClient, *, ttl: float = 60.0, negative_ttl: float = 5.0, max_entries: int = 10_000
    ) -> None:
        self._core = core
        self._answers = KeyAnswers(ttl=ttl, negative_ttl=negative_ttl, max_entries=max_entries)

    def known(self, token: str) -> Principal | None:
        return self._answers.known_token(token)

    async def authenticate(self, token: str | None) -> Principal:
        key_id, digest = credentials(token)
        cached = self._answers.lookup(digest)
        if cached is not None:
            return cached
        epoch = self._answers.epoch
        try:
            reply = await self._core.call(
                self._core.callers.GetCaller,
                pb.GetCallerRequest(key_id=key_id, token_sha256=digest),
                name="GetCaller",
                on_behalf_of=None,
                idempotent=True,
            )
        except Unauthenticated:
            self._answers.unknown(digest)
            raise
        principal = Principal(
            key_id=reply.key_id,
            scopes=frozenset(_scopes(reply.scopes)),
            api_version=reply.api_version,
            plan=reply.plan,
            token_sha256=digest,
            valid_until=from_unix_micros(reply.valid_until_unix_micros)
            if reply.valid_until_unix_micros
            else None,
        )
        self._answers.known(digest, principal, looked_up_at=epoch)
        return principal

    def forget_key(self, key_id: str) -> None:
        """A revocation pushed over Redis: the core is asked again on the key's next request."""
        self._answers.forget(key_id)

    def forget_all(self) -> None:
        self._answers.forget_all()


def _scopes(names: Iterable[str]) -> Iterator[Scope]:
    for name in names:
        try:
            yield Scope(name)
        except ValueError:
            continue  # a scope a newer core knows and this edge does not: it grants nothing here


def _without_region(document: JSONValue) -> JSONValue:
    if isinstance(document, dict) and "region" in document:
        return {key: value for key, value in document.items() if key != "region"}
    return document


def _region_of_create(document: JSONValue) -> str:
    """The `region` a create asks for, carried apart from the profile (empty: none); one that is
    not a region is refused here with the use case's own error (the message's empty string means
    none, and a string it cannot encode would fail the call)."""
    region = document.get("region") if isinstance(document, dict) else None
    if region is None:
        return ""
    if not is_region(region):
        raise ValidationFailed([FieldError("/region", REGION_RULE)])
    return region
