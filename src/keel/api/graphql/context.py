"""What every resolver of one GraphQL request shares: the caller, the use cases, the DataLoaders
and the cost meter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from keel.domain.api_keys import Principal
from keel.domain.errors import KeelError, Unauthenticated
from keel.service.use_cases import EndUserUseCases, PersonalDataUseCases, ProfileUseCases

from .loaders import ProfileLoaders


@dataclass
class CostMeter:
    """Rate-limit units actually spent: one charge per use-case call made (a batch of lookups
    by id is one call), priced like the REST operation that calls the same use case; `spent`
    starts at what the operation costs whatever its resolvers do (its introspection)."""

    prices: Mapping[str, int]
    spent: int = 0

    def charge(self, operation: str) -> None:
        self.spent += self.prices.get(operation) or self.prices["other"]


@dataclass
class GraphQLContext:
    profiles: ProfileUseCases
    principal: Principal | None
    # Why there is no principal (missing, unknown or revoked key; the key store unavailable).
    auth_error: KeelError | None
    meter: CostMeter
    idempotency_key: str | None
    personal_data: PersonalDataUseCases | None = None  # a core's; None on an edge
    end_users: EndUserUseCases | None = None  # a core's with KEEL_OIDC_* set; None otherwise
    loaders: ProfileLoaders = field(init=False)

    def __post_init__(self) -> None:
        self.loaders = ProfileLoaders(self.profiles, self.caller, self.meter.charge)

    def caller(self) -> Principal:
        """The authenticated caller; raises the reason there is none (UNAUTHENTICATED)."""
        if self.principal is not None:
            return self.principal
        raise self.auth_error or Unauthenticated("An API key is required: Authorization: Bearer <key>.")
