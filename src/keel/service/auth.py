"""API key issuing and authentication.

Keys look like `keel_<key id>_<secret>`. A caller proves a key with the token itself; an edge
proves a caller's key with the token's SHA-256 (its *digest*), so that the token never leaves
the edge. What is stored is neither: it is a *verifier*, a second hash of the digest, so that a
copy of the database (a backup, a replica) holds nothing that authenticates. The secret has 256
random bits, so a slow password hash would add latency without adding safety (slow hashes
protect guessable passwords, and nothing here is guessable).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from keel.domain.api_keys import ApiKey, AuditEntry, Principal, Scope
from keel.domain.errors import Forbidden, Unauthenticated
from keel.domain.events import api_key_created, api_key_revoked
from keel.service.admin_actions import record_admin_action
from keel.service.clock import SystemClock
from keel.service.ports import Clock, Store

_V = TypeVar("_V")
TOKEN_PREFIX = "keel_"  # noqa: S105 - a public prefix, not a secret


MISSING_KEY = "An API key is required: send `Authorization: Bearer keel_...`."
INVALID_KEY = "The API key is not valid."


def token_digest(token: str) -> str:
    """The proof of a token an edge sends for its caller: never stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def key_verifier(digest: str) -> str:
    """What is stored for a key whose token has SHA-256 `digest` (see the module's docstring)."""
    return hashlib.sha256(_VERIFIER_CONTEXT + digest.encode()).hexdigest()


_VERIFIER_CONTEXT = b"keel-api-key-verifier\0"
# Compared against when no key matches, so that every refusal costs the same work.
_NO_KEY_ID = "-" * 16


def parse_key_id(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "keel" or len(parts[1]) != 16 or len(parts[2]) < 32:
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    token: str


def new_secret(key_id: str) -> tuple[str, str]:
    """A new token for key `key_id`, and the verifier stored for it."""
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return token, key_verifier(token_digest(token))


async def issue_api_key(
    store: Store,
    clock: Clock,
    *,
    scopes: Iterable[Scope],
    api_version: str,
    name: str,
    plan: str | None = None,
    expires_at: datetime | None = None,
    event_source: str = "/keel",
    audit: Callable[[ApiKey], AuditEntry] | None = None,
) -> IssuedKey:
    """Create and store a key; the returned token is the only time the secret exists in clear.
    Without a plan, an edge's key gets the `edge` plan, any other key `standard`. `audit`: the
    audit entry recorded with it, in the same transaction (an admin's action)."""
    granted = frozenset(scopes)
    plan = plan or ("edge" if Scope.EDGE in granted else "standard")
    key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    token, verifier = new_secret(key_id)
    key = ApiKey(
        id=key_id,
        secret_hash=verifier,
        scopes=granted,
        api_version=api_version,
        name=name,
        created_at=clock.now(),
        plan=plan,
        expires_at=expires_at,
    )
    async with store.unit_of_work() as uow:
        await uow.api_keys.add(key)
        await uow.outbox.add(api_key_created(key), event_source)
        if audit is not None:
            await record_admin_action(uow, audit(key), event_source)
        await uow.commit()
    return IssuedKey(key=key, token=token)


async def revoke_api_key(
    store: Store,
    clock: Clock,
    key_id: str,
    *,
    event_source: str = "/keel",
    audit: Callable[[datetime], AuditEntry] | None = None,
) -> bool:
    """Revoke a key. Processes that cached it stop accepting it within their cache TTL, or at
    once when the revocation is pushed to them (`KeyRevocations`, the caller's next step).
    `audit`: the entry recorded with a revocation, in its transaction (given its time)."""
    async with store.unit_of_work() as uow:
        now = clock.now()
        revoked = await uow.api_keys.revoke(key_id, now)
        if revoked:
            await uow.outbox.add(api_key_revoked(key_id, now), event_source)
            if audit is not None:
                await record_admin_action(uow, audit(now), event_source)
        await uow.commit()
    return revoked


async def list_api_keys(store: Store) -> list[ApiKey]:
    async with store.unit_of_work(read_only=True) as uow:
        return await uow.api_keys.list_all()


class KeyAnswers:
    """What API keys turned out to be, kept in process by token digest: known keys for `ttl`
    seconds (so a revocation takes at most that long to be seen, or until it is pushed:
    `forget`), unknown ones for `negative_ttl`, kept apart so that a flood of garbage tokens can
    only evict other garbage."""

    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._ttl = ttl
        self._wall_clock = wall_clock
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._known: dict[str, tuple[Principal, float]] = {}
        self._unknown: dict[str, float] = {}
        # Moved on by every `forget`: an answer whose lookup began before it may predate the
        # revocation, and is used for that request but not kept (see `known`).
        self.epoch = 0

    def forget(self, key_id: str) -> None:
        """Stop trusting key `key_id` (revoked elsewhere): its next request is looked up again."""
        self.epoch += 1
        for digest in [d for d, (principal, _) in self._known.items() if principal.key_id == key_id]:
            del self._known[digest]

    def forget_all(self) -> None:
        """Stop trusting every key (revocations may have been missed)."""
        self.epoch += 1
        self._known.clear()

    def lookup(self, digest: str) -> Principal | None:
        """The principal, None when not known; `Unauthenticated` when known to be invalid."""
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            principal = known[0]
            if principal.valid_until is None or principal.valid_until > self._wall_clock():
                return principal
            del self._known[digest]  # its credential has expired since: looked up again
        unknown_until = self._unknown.get(digest)
        if unknown_until is not None and unknown_until > now:
            raise Unauthenticated(INVALID_KEY)
        return None

    def known_token(self, token: str) -> Principal | None:
        """The principal of a well-formed token already known to be valid; None for anything
        else (unknown, known invalid, malformed), which only the full lookup may answer."""
        if parse_key_id(token) is None:
            return None
        try:
            return self.lookup(token_digest(token))
        except Unauthenticated:
            return None

    def known(self, digest: str, principal: Principal, *, looked_up_at: int) -> None:
        """Keep `principal` for `ttl`, unless a key was forgotten since the lookup began (the
        `epoch` then, `looked_up_at`): the answer may be from before that key's revocation.
        Never kept past the principal's `valid_until` (an expiry reached on its own: nothing is
        pushed then)."""
        if looked_up_at != self.epoch:
            return
        lifetime = self._ttl
        if principal.valid_until is not None:
            lifetime = min(lifetime, (principal.valid_until - self._wall_clock()).total_seconds())
            if lifetime <= 0:
                return
        remember(self._known, digest, (principal, time.monotonic() + lifetime), self._max_entries)

    def unknown(self, digest: str) -> None:
        remember(self._unknown, digest, time.monotonic() + self._negative_ttl, self._max_entries)


def credentials(token: str | None) -> tuple[str, str]:
    """A bearer token's key id and digest; `Unauthenticated` when missing or malformed."""
    if not token:
        raise Unauthenticated(MISSING_KEY)
    key_id = parse_key_id(token)
    if key_id is None:
        raise Unauthenticated(INVALID_KEY)  # malformed: no lookup, no caching
    return key_id, token_digest(token)


class Authenticator:
    """Resolves API keys to principals, caching both answers in process (`KeyAnswers`)."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
        compare: Callable[[bytes, bytes], bool] = hmac.compare_digest,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._compare = compare  # a parameter so that tests can count the comparisons
        self._clock = clock or SystemClock()
        self._answers = KeyAnswers(
            ttl=ttl, negative_ttl=negative_ttl, max_entries=max_entries, wall_clock=self._clock.now
        )

    async def authenticate(self, token: str | None) -> Principal:
        return await self.resolve(*credentials(token))

    def known(self, token: str) -> Principal | None:
        return self._answers.known_token(token)

    async def resolve(self, key_id: str, digest: str, *, fresh: bool = False) -> Principal:
        """The principal of the key `key_id` whose token has SHA-256 `digest`: how a bearer
        token is checked, and how an edge proves the key it acts for without sending it.
        `fresh`: from the database even when known (an edge's own lookup: it keeps the answer
        for its cache's lifetime, and must not be handed one this process has not yet been
        told is revoked)."""
        cached = None if fresh else self._answers.lookup(digest)
        if cached is not None:
            if cached.key_id != key_id:
                # A proof of one key sent with the id of another: the pair names no key.
                raise Unauthenticated(INVALID_KEY)
            return cached
        epoch = self._answers.epoch
        principal = await self._load(key_id, digest)
        if principal is None:
            self._answers.unknown(digest)
            raise Unauthenticated(INVALID_KEY)
        self._answers.known(digest, principal, looked_up_at=epoch)
        return principal

    def forget_key(self, key_id: str) -> None:
        """A revocation pushed by another process (`KeyRevocations`)."""
        self._answers.forget(key_id)

    def forget_all(self) -> None:
        self._answers.forget_all()

    async def _load(self, key_id: str, digest: str) -> Principal | None:
        # Looked up by verifier, not by id: a wrong secret and an unknown id are then the same
        # query finding no row, so response times cannot tell which key ids exist (looked up by
        # id, a known id's row was read and decoded, measurably slower). The id the caller named
        # is then compared in constant time against the key found.
        verifier = key_verifier(digest)
        async with self._store.unit_of_work(read_only=True) as uow:
            key = await uow.api_keys.by_verifier(verifier)
        found_id = key.id if key is not None else _NO_KEY_ID
        matches = self._compare(found_id.encode(), key_id.encode())
        if key is None or not matches:
            return None
        valid_until = credential_valid_until(key, verifier, self._clock.now())
        if valid_until is False:
            return None
        return Principal(
            key_id=key.id,
            scopes=key.scopes,
            api_version=key.api_version,
            plan=key.plan,
            valid_until=valid_until,
            via_previous_secret=not hmac.compare_digest(verifier, key.secret_hash),
        )


def credential_valid_until(key: ApiKey, verifier: str, now: datetime) -> datetime | Literal[False] | None:
    """Until when the secret whose verifier is `verifier` authenticates `key`: None for as long
    as the key lives, False when it does not now (the key revoked or expired, or the secret
    one a rotation replaced and its time is up)."""
    if not key.usable_at(now):
        return False
    if hmac.compare_digest(verifier, key.secret_hash):
        return key.expires_at
    previous = key.previous_secret_hash
    if (
        previous is not None
        and hmac.compare_digest(verifier, previous)
        and key.previous_usable_at(now)
        and key.previous_expires_at is not None
    ):
        return min(key.previous_expires_at, key.expires_at or key.previous_expires_at)
    return False


def remember(cache: dict[str, _V], digest: str, value: _V, max_entries: int) -> None:
    if digest not in cache and len(cache) >= max_entries:
        # Dicts keep insertion order: dropping the first entry drops the oldest.
        cache.pop(next(iter(cache)))
    cache[digest] = value


END_USERS_OWN_PROFILE_ONLY = "End users reach only their own profile: /v1/me (GraphQL: me, updateMe)."


def require(principal: Principal, scope: Scope) -> None:
    if not principal.can(scope):
        if principal.end_user is not None:
            raise Forbidden(END_USERS_OWN_PROFILE_ONLY)
        raise Forbidden(f"This API key lacks the `{scope}` scope.")
