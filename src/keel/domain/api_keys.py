"""API keys and the scopes they grant."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


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

    def can(self, scope: Scope) -> bool:
        # admin implies every other scope but edge: an operator key must be able to do what any
        # key can, but not to act as another key.
        return scope in self.scopes or (Scope.ADMIN in self.scopes and scope is not Scope.EDGE)

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes
