"""API keys and the scopes they grant."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from keel.domain.end_users import EndUser


class Scope(StrEnum):
    PROFILES_READ = "profiles:read"
    PROFILES_WRITE = "profiles:write"
    ADMIN = "admin"
    # An edge deployment's key: may act on behalf of the callers it has authenticated. Never
    # implied by admin, since it lets a caller choose whose identity a call runs under.
    EDGE = "edge"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key. Only a hash of the secret is kept; the secret itself is shown once."""

    id: str
    secret_hash: str
    scopes: frozenset[Scope]
    api_version: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    plan: str = "standard"  # the rate-limit plan applied to this key's requests
    expires_at: datetime | None = None  # none: until revoked
    # The verifier of the secret the last rotation replaced, accepted until `previous_expires_at`.
    previous_secret_hash: str | None = None
    previous_expires_at: datetime | None = None

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def previous_usable_at(self, now: datetime) -> bool:
        return (
            self.usable_at(now)
            and self.previous_secret_hash is not None
            and self.previous_expires_at is not None
            and now < self.previous_expires_at
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who (`actor`, a key id), what (`action` on `subject`), when. `detail`
    holds what changed, never a secret."""

    at: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, object]
    seq: int | None = None  # assigned by the store


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    scopes: frozenset[Scope]
    api_version: str
    plan: str = "standard"
    # SHA-256 (hex) of the token the caller presented, where a remote core needs it as proof
    # (an edge acting on the caller's behalf); None otherwise.
    token_sha256: str | None = field(default=None, repr=False, compare=False)
    # When the credential presented stops working by itself (the key's expiry, or a rotated-out
    # secret's); None: only a revocation ends it. A cached answer never outlives it.
    valid_until: datetime | None = field(default=None, compare=False)
    # Authenticated by the secret a rotation replaced (during its grace): may not manage keys.
    via_previous_secret: bool = field(default=False, compare=False)
    # An end user (an OpenID Connect token, not a key): no scopes, only their own profile
    # (`keel.service.end_users`); `key_id` is then `end_user.client_id`.
    end_user: EndUser | None = None

    def can(self, scope: Scope) -> bool:
        # admin implies every other scope but edge: an operator key must be able to do what any
        # key can, but not to act as another key.
        return scope in self.scopes or (Scope.ADMIN in self.scopes and scope is not Scope.EDGE)

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes
