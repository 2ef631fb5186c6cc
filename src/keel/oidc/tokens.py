"""Checks end users' access tokens (JWTs) against the issuer's JWKS.

What a token must be, in this order, or it is refused as not valid (one message for all: a caller
learns nothing from which check failed):
- signed with an algorithm of the allow-list, which has asymmetric ones only (`alg: none` and
  HS256 "signed" with the public key are refused before any key is looked at);
- typed `at+jwt` (RFC 9068), when `access_tokens_only`;
- signed by a key of the issuer's JWKS named by its `kid`, of the type the algorithm needs (and
  of that algorithm, if the key names one);
- issued by the configured issuer, for the configured audience, with `exp`, `iat` and `sub`
  present, not expired and not before its `nbf` (within the leeway), its `sub` 1-255 characters
  of text without control characters.

The JWKS is fetched once and used for `cache_seconds`; a token naming a `kid` the set does not
hold fetches it again (the issuer rotated its keys), but at most once per `refetch_seconds`
whatever the tokens say, so a flood of made-up `kid`s costs the issuer one fetch per interval.
A key held is used at once (a refresh due runs in the background); a request waits for one
running fetch at most. While the issuer cannot be reached the keys last fetched stay in use.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from keel.domain.end_users import ASYMMETRIC_ALGORITHMS, EndUser, valid_subject
from keel.domain.errors import KeelError, Unauthenticated, Unavailable

INVALID_TOKEN = "The access token is not valid."  # noqa: S105 - a message, not a secret
_MAX_JWKS_BYTES = 256 * 1024
_FETCH_TIMEOUT_SECONDS = 5.0
_RETRY_WITHOUT_KEYS = 1.0
_ACCESS_TOKEN_TYPES = {"at+jwt", "application/at+jwt"}

JwksFetch = Callable[[], Awaitable[bytes]]


def http_fetch(url: str) -> JwksFetch:
    """Fetches the JWKS at `url` with httpx: no redirects, a 5 s bound, at most 256 KiB."""

    async def fetch() -> bytes:
        # The whole fetch within the bound (httpx's timeout is per read: a server sending a byte
        # at a time would hold it for ever).
        async with (
            asyncio.timeout(_FETCH_TIMEOUT_SECONDS),
            httpx.AsyncClient(timeout=_FETCH_TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise OSError(f"the JWKS answered {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise OSError("the JWKS is larger than 256 KiB")
            return body

    return fetch


class JwksTokens:
    """`EndUserTokens` (keel.service.end_users) over an issuer's JWKS."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        fetch: JwksFetch,
        algorithms: Collection[str],
        leeway_seconds: float = 30.0,
        cache_seconds: float = 300.0,
        refetch_seconds: float = 30.0,
        access_tokens_only: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`access_tokens_only`: refuse a token whose header does not say `typ: at+jwt` (RFC
        9068), so that an ID token for the same audience is refused too."""
        unsafe = set(algorithms) - ASYMMETRIC_ALGORITHMS
        if unsafe or not algorithms:
            raise ValueError(f"asymmetric algorithms only, not {sorted(unsafe)}")
        self._issuer = issuer
        self._audience = audience
        self._fetch = fetch
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway_seconds
        self._cache_seconds = cache_seconds
        self._refetch_seconds = refetch_seconds
        self._access_tokens_only = access_tokens_only
        self._monotonic = monotonic
        self._keys: dict[str, dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str], PyJWK] = {}
        self._fetched_at: float | None = None  # of the last attempt, successful or not
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._last_failed = False  # the last fetch failed: a kid not held may exist unseen
        self.fetches = 0  # attempts made: read by tests and metrics

    async def verify(self, token: str) -> EndUser:
        try:
            return await self._verify(token)
        except KeelError:
            raise
        except Exception:  # noqa: BLE001 - whatever a crafted token trips on is a token not valid
            raise Unauthenticated(INVALID_TOKEN) from None

    async def _verify(self, token: str) -> EndUser:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN) from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise Unauthenticated(INVALID_TOKEN)
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise Unauthenticated(INVALID_TOKEN)
        if self._access_tokens_only and str(header.get("typ", "")).lower() not in _ACCESS_TOKEN_TYPES:
            raise Unauthenticated(INVALID_TOKEN)
        key = await self._key(kid, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "strict_aud": False},
            )
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN) from None
        subject = claims.get("sub")
        if not valid_subject(subject):
            raise Unauthenticated(INVALID_TOKEN)
        assert isinstance(subject, str)
        return EndUser(self._issuer, subject)

    async def _key(self, kid: str, algorithm: str) -> PyJWK:
        now = self._monotonic()
        if kid in self._keys:
            # A key held is used at once; a set due for a refresh is fetched in the background.
            if not self._lock.locked() and self._needs_fetch(kid, now):
                self._refresh_in_background()
            return self._parse(kid, algorithm)
        # A key not held: a request that finds a fetch running waits for that one fetch (its
        # keys may be the ones it needs) and never starts another after it, so every request
        # waits for one fetch at most, and one fetch serves all that came meanwhile.
        if self._lock.locked():
            async with self._lock:
                pass  # the fetch running ended, whatever it brought: none is started after it
        elif self._needs_fetch(kid, now):
            async with self._lock:
                if self._needs_fetch(kid, self._monotonic()):
                    await self._refresh()
        if not self._keys or (kid not in self._keys and self._last_failed):
            # The issuer could not be asked: whether the key exists is unknown, not refused.
            raise Unavailable("The issuer's signing keys are not available; retry shortly.")
        return self._parse(kid, algorithm)

    async def settled(self) -> None:
        """Wait for the refreshes started in the background (tests, shutdown)."""
        await asyncio.gather(*self._background)

    def _refresh_in_background(self) -> None:
        if self._background:
            return  # one is on its way

        async def refresh() -> None:
            async with self._lock:
                now = self._monotonic()
                if now >= self._fresh_until and self._needs_fetch("", now):
                    await self._refresh()

        task = asyncio.create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _needs_fetch(self, kid: str, now: float) -> bool:
        if self._fetched_at is None:
            return True
        # The bound on fetches, whatever the tokens name; shorter while no key is held at all
        # (the issuer was down when the first token came), since every end user waits then.
        interval = self._refetch_seconds if self._keys else min(self._refetch_seconds, _RETRY_WITHOUT_KEYS)
        if now - self._fetched_at < interval:
            return False
        return now >= self._fresh_until or kid not in self._keys

    async def _refresh(self) -> None:
        """Fetch the JWKS (under the lock); a failure keeps the keys last fetched."""
        self._fetched_at = self._monotonic()
        self.fetches += 1
        try:
            keys = _signing_keys(json.loads(await self._fetch()))
        except Exception:  # noqa: BLE001 - any failure keeps the keys last fetched
            self._last_failed = True
            return
        self._last_failed = False
        self._keys = keys
        self._parsed = {}
        self._fresh_until = self._fetched_at + self._cache_seconds

    def _parse(self, kid: str, algorithm: str) -> PyJWK:
        parsed = self._parsed.get((kid, algorithm))
        if parsed is not None:
            return parsed
        jwk = self._keys.get(kid)
        if jwk is None or jwk.get("alg", algorithm) != algorithm:
            raise Unauthenticated(INVALID_TOKEN)
        try:
            parsed = PyJWK(jwk, algorithm)  # refuses a key of another type than the algorithm's
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN) from None
        if len(self._parsed) < 64:
            self._parsed[(kid, algorithm)] = parsed
        return parsed


def _signing_keys(document: object) -> dict[str, dict[str, Any]]:
    """The public signing keys of a JWKS by `kid` (keys without a `kid`, for encryption, or
    carrying private parts are left out)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS")
    keys: dict[str, dict[str, Any]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig" or "d" in jwk or jwk.get("kty") == "oct":
            continue
        keys[jwk["kid"]] = jwk
    return keys
