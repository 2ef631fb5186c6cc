"""The port every protocol adapter calls: the profile use cases and the caller's identity.

`ProfileService` implements it in process. A remote adapter (the gRPC client of an edge
deployment) implements the same protocols, so REST and GraphQL are written once and run either
over the local service or over a core reached through the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from keel.domain.api_keys import Principal, Scope
from keel.domain.end_users import SubjectLink
from keel.domain.profile import JSONObject, JSONValue, Profile
from keel.service.erasure import ErasureStatus
from keel.service.profile_reads import ProfileRead

# A version the caller expects the profile to be at, or several (an If-Match with a list of
# entity tags succeeds if any of them is current); None: no precondition.
ExpectedVersion = int | frozenset[int] | None

MAX_PAGE_SIZE = 100
MAX_IDS_PER_QUERY = 100
MAX_IDS_PER_BATCH = 500
IDEMPOTENCY_KEY_RULE = "1-255 printable ASCII characters"


def valid_idempotency_key(value: str) -> bool:
    """An idempotency key (REST's `Idempotency-Key`, gRPC's `request_id`) is stored and compared
    as given: keep it short and printable."""
    return 1 <= len(value) <= 255 and value.isascii() and value.isprintable()


# What the answer to a change may show a caller without `profiles:read`: a write-only key must not
# be able to read a profile by changing it (a no-op patch would otherwise return it whole).
RECEIPT_FIELDS = frozenset({"id", "version", "created_at", "updated_at"})


def answer_shows_profile(principal: Principal) -> bool:
    """Whether the answer to an update may carry the profile, or only its receipt
    (`RECEIPT_FIELDS`). Every protocol renders the receipt in its own shape."""
    return principal.can(Scope.PROFILES_READ)


@dataclass(frozen=True, slots=True)
class Created:
    profile: Profile
    replayed: bool


@dataclass(frozen=True, slots=True)
class ProfilePage:
    profiles: list[Profile]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ListFilters:
    handle: str | None = None
    email: str | None = None
    ids: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "handle": self.handle,
            "email": self.email,
            "ids": ",".join(self.ids) if self.ids is not None else None,
        }


class ProfileUseCases(Protocol):
    """What a caller can do with profiles. Every profile returned is already cut to what the
    caller may see; every refusal is a `KeelError`."""

    async def read_profile(self, principal: Principal, profile_id: str) -> ProfileRead:
        """The live profile, with the age of the copy served (`stale` when the database was
        unavailable and a cached copy stood in). `NotFound` when absent or deleted."""
        ...

    async def get_profiles(self, principal: Principal, profile_ids: Sequence[str]) -> dict[str, Profile]:
        """Up to `MAX_IDS_PER_BATCH` profiles by id, in one read. Ids with no live profile are
        absent from the answer, which is not an error."""
        ...

    async def list_profiles(
        self, principal: Principal, filters: ListFilters, *, limit: int, cursor: str | None
    ) -> ProfilePage: ...

    async def create_profile(
        self, principal: Principal, document: JSONValue, *, idempotency_key: str | None = None
    ) -> Created: ...

    async def update_profile(
        self,
        principal: Principal,
        profile_id: str,
        patch: JSONValue,
        *,
        expected_version: ExpectedVersion = None,
    ) -> Profile: ...

    async def delete_profile(
        self, principal: Principal, profile_id: str, *, expected_version: ExpectedVersion = None
    ) -> None: ...

    async def handle_available(self, principal: Principal, handle: str) -> bool:
        """Whether a profile could be created with `handle` now: well formed, and no live
        profile holds it (a deleted one frees its handle). `ValidationFailed` for a handle no
        profile may have."""
        ...


class CallerAuthenticator(Protocol):
    async def authenticate(self, token: str | None) -> Principal:
        """The principal an API key stands for; `Unauthenticated` for a missing or unknown key."""
        ...

    def known(self, token: str) -> Principal | None:
        """The principal of a key this process already knows to be valid, without any I/O;
        None when only `authenticate` can tell."""
        ...


class RevocableAuthenticator(CallerAuthenticator, Protocol):
    """A process's authenticator, which revocations pushed from elsewhere reach."""

    def forget_key(self, key_id: str) -> None:
        """Stop trusting a key revoked elsewhere (pushed: `KeyRevocations`)."""
        ...

    def forget_all(self) -> None:
        """Stop trusting every key: revocations may have been missed."""
        ...


class EndUserUseCases(Protocol):
    """End users reading and changing their own profile, and admins linking profiles to them
    (keel.service.end_users). An API key calling `me` is `Forbidden`; an end user calling
    anything else is too (they hold no scope)."""

    async def me(self, principal: Principal) -> ProfileRead: ...

    async def update_me(
        self,
        principal: Principal,
        patch: JSONValue,
        *,
        expected_version: ExpectedVersion = None,
        expected_version_of: Callable[[str], ExpectedVersion] | None = None,
    ) -> Profile: ...

    async def link(self, principal: Principal, profile_id: str, subject: object) -> SubjectLink: ...

    async def linked_subject(self, principal: Principal, profile_id: str) -> SubjectLink: ...

    async def unlink(self, principal: Principal, profile_id: str) -> None: ...


class PersonalDataUseCases(Protocol):
    """Export and erasure of a profile's personal data (admin keys only: `Forbidden` before
    anything is looked up)."""

    async def export_profile(self, principal: Principal, profile_id: str) -> JSONObject:
        """Everything Keel holds about the profile as one JSON document; `NotFound` if nothing."""
        ...

    async def start_erasure(self, principal: Principal, profile_id: str) -> ErasureStatus:
        """Start (or, asked again, return) the profile's erasure saga; `NotFound` if Keel never
        held the profile."""
        ...

    async def erasure_status(self, principal: Principal, erasure_id: str) -> ErasureStatus: ...
