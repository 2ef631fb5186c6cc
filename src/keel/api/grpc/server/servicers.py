"""The RPCs: read the message, call one use case, build the answer. Admission, deadlines and
errors are handled around them (see `server.py`)."""

from __future__ import annotations

from typing import Any

import grpc

from keel.api.grpc.server.admission import KeyResolver, caller, via_edge
from keel.api.grpc.server.encoded import Encoded, EncodedProfiles, length_delimited
from keel.api.grpc.wire.messages import (
    document_from_message,
    patch_from_message,
    profile_message,
    unix_micros,
)
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.domain.api_keys import Scope
from keel.domain.erasure import ErasureStep
from keel.domain.errors import FieldError, Forbidden, Unavailable, ValidationFailed
from keel.service.erasure import ErasureStatus
from keel.service.use_cases import (
    IDEMPOTENCY_KEY_RULE,
    MAX_PAGE_SIZE,
    ExpectedVersion,
    ListFilters,
    PersonalDataUseCases,
    ProfileUseCases,
    answer_shows_profile,
    valid_idempotency_key,
)

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_PAGE_SIZE = 20
# Field numbers of the repeated answers assembled from encoded profiles (see encoded.py).
_PROFILES_FIELD = pb.BatchGetProfilesResponse.PROFILES_FIELD_NUMBER
_MISSING_IDS_FIELD = pb.BatchGetProfilesResponse.MISSING_IDS_FIELD_NUMBER
_NEXT_PAGE_TOKEN_FIELD = pb.ListProfilesResponse.NEXT_PAGE_TOKEN_FIELD_NUMBER
assert pb.ListProfilesResponse.PROFILES_FIELD_NUMBER == _PROFILES_FIELD


def request_id(value: str) -> str | None:
    """The idempotency key a create carries, checked like REST's `Idempotency-Key`."""
    if not value:
        return None
    if not valid_idempotency_key(value):
        raise ValidationFailed([FieldError("/request_id", IDEMPOTENCY_KEY_RULE)])
    return value


def _expected(versions: Any) -> ExpectedVersion:
    return frozenset(int(v) for v in versions) or None


def erasure_message(status: ErasureStatus) -> pb.Erasure:
    e = status.erasure
    message = pb.Erasure(
        id=e.id,
        profile_id=e.profile_id,
        state=e.state.value,
        pending_holders=list(status.pending_holders),
        attempts=e.attempts,
    )
    if e.next_step is not None:
        message.next_step = e.next_step.value
    if e.last_error is not None:
        message.last_error = e.last_error
    message.request_time.FromDatetime(e.requested_at)
    message.give_up_time.FromDatetime(e.give_up_at)
    if e.finished_at is not None:
        message.finish_time.FromDatetime(e.finished_at)
    for step in ErasureStep:
        entry = message.steps.add(name=step.value)
        done_at = e.done_at(step)
        if done_at is not None:
            entry.done = True
            entry.done_time.FromDatetime(done_at)
    return message


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    def __init__(
        self,
        profiles: ProfileUseCases,
        *,
        encoded_profiles: int,
        personal_data: PersonalDataUseCases | None = None,
    ) -> None:
        self._profiles = profiles
        self._encoded = EncodedProfiles(encoded_profiles)
        self._personal_data = personal_data

    async def GetProfile(self, request: pb.GetProfileRequest, context: Context) -> pb.GetProfileResponse:
        read = await self._profiles.read_profile(caller(), request.id)
        return pb.GetProfileResponse(
            profile=profile_message(read.profile),
            age_seconds=read.age_seconds,
            stale=read.stale,
            fresh_seconds=read.fresh_seconds,
        )

    async def BatchGetProfiles(
        self, request: pb.BatchGetProfilesRequest, context: Context
    ) -> pb.BatchGetProfilesResponse:
        principal = caller()
        found = await self._profiles.get_profiles(principal, list(request.ids))
        parts: list[bytes] = []
        missing: list[str] = []
        for profile_id in dict.fromkeys(request.ids):
            profile = found.get(profile_id)
            if profile is None:
                missing.append(profile_id)
            else:
                parts.append(self._encoded.entry(_PROFILES_FIELD, profile, principal.is_admin))
        parts.extend(length_delimited(_MISSING_IDS_FIELD, i.encode()) for i in missing)
        return Encoded(b"".join(parts))  # type: ignore[return-value]  # wire form, see encoded.py

    async def CreateProfile(
        self, request: pb.CreateProfileRequest, context: Context
    ) -> pb.CreateProfileResponse:
        document = document_from_message(request.profile)
        if request.region:
            document["region"] = request.region
        created = await self._profiles.create_profile(
            caller(), document, idempotency_key=request_id(request.request_id)
        )
        return pb.CreateProfileResponse(profile=profile_message(created.profile), replayed=created.replayed)

    async def UpdateProfile(
        self, request: pb.UpdateProfileRequest, context: Context
    ) -> pb.UpdateProfileResponse:
        principal = caller()
        if not principal.can(Scope.PROFILES_WRITE):
            # Before the mask is read: a reader learns nothing about what a write would check.
            raise Forbidden(f"This API key lacks the `{Scope.PROFILES_WRITE}` scope.")
        profile = await self._profiles.update_profile(
            principal,
            request.profile.id,
            patch_from_message(request.profile, request.update_mask),
            expected_version=_expected(request.expected_versions),
        )
        if not answer_shows_profile(principal) and not via_edge():
            # The receipt: who and which version, none of the profile's data (an edge acting for
            # a write-only caller cuts the answer itself).
            receipt = pb.Profile(id=profile.id, version=profile.version)
            receipt.create_time.FromDatetime(profile.created_at)
            receipt.update_time.FromDatetime(profile.updated_at)
            return pb.UpdateProfileResponse(profile=receipt)
        return pb.UpdateProfileResponse(profile=profile_message(profile))

    async def DeleteProfile(
        self, request: pb.DeleteProfileRequest, context: Context
    ) -> pb.DeleteProfileResponse:
        await self._profiles.delete_profile(
            caller(), request.id, expected_version=_expected(request.expected_versions)
        )
        return pb.DeleteProfileResponse()

    async def EraseProfile(
        self, request: pb.EraseProfileRequest, context: Context
    ) -> pb.EraseProfileResponse:
        status = await self._erasures().start_erasure(caller(), request.id)
        return pb.EraseProfileResponse(erasure=erasure_message(status))

    async def GetErasure(self, request: pb.GetErasureRequest, context: Context) -> pb.GetErasureResponse:
        status = await self._erasures().erasure_status(caller(), request.id)
        return pb.GetErasureResponse(erasure=erasure_message(status))

    def _erasures(self) -> PersonalDataUseCases:
        if self._personal_data is None:
            raise Unavailable("Erasure is served by a core, not by an edge: ask the core.")
        return self._personal_data

    async def CheckHandle(self, request: pb.CheckHandleRequest, context: Context) -> pb.CheckHandleResponse:
        return pb.CheckHandleResponse(
            available=await self._profiles.handle_available(caller(), request.handle)
        )

    async def ListProfiles(
        self, request: pb.ListProfilesRequest, context: Context
    ) -> pb.ListProfilesResponse:
        filters = ListFilters(
            handle=request.handle if request.HasField("handle") else None,
            email=request.email if request.HasField("email") else None,
            ids=tuple(request.ids.ids) if request.HasField("ids") else None,
        )
        principal = caller()
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise ValidationFailed(
                [FieldError("/page_size", f"between 0 (the default, 20) and {MAX_PAGE_SIZE}")]
            )
        page = await self._profiles.list_profiles(
            principal,
            filters,
            limit=request.page_size or DEFAULT_PAGE_SIZE,
            cursor=request.page_token or None,
        )
        parts = [self._encoded.entry(_PROFILES_FIELD, p, principal.is_admin) for p in page.profiles]
        if page.next_cursor:
            parts.append(length_delimited(_NEXT_PAGE_TOKEN_FIELD, page.next_cursor.encode()))
        return Encoded(b"".join(parts))  # type: ignore[return-value]  # wire form, see encoded.py


class CallerServicer(pb_grpc.CallerServiceServicer):
    def __init__(self, keys: KeyResolver) -> None:
        self._authenticator = keys

    async def GetCaller(self, request: pb.GetCallerRequest, context: Context) -> pb.GetCallerResponse:
        principal = caller()
        if request.key_id or request.token_sha256:
            if not principal.can(Scope.EDGE):
                raise Forbidden(f"Only a key with the `{Scope.EDGE}` scope may resolve other keys.")
            # From the database: the edge caches the answer, and a revocation pushed to both may
            # reach it before it reaches this core's cache.
            principal = await self._authenticator.resolve(request.key_id, request.token_sha256, fresh=True)
        valid_until = principal.valid_until
        return pb.GetCallerResponse(
            key_id=principal.key_id,
            scopes=sorted(principal.scopes),
            api_version=principal.api_version,
            plan=principal.plan,
            valid_until_unix_micros=unix_micros(valid_until) if valid_until is not None else 0,
        )
