"""Signing secrets sealed with AES-256-GCM: a secret must stay usable (Keel signs with it, so
it cannot be hashed like an API key), but a copy of the database alone must not give it away.
Sealed form: `v1.` + base64url(12-byte nonce + ciphertext + tag); the endpoint id is not bound
in, so a row's secret moved to another row would still open (only someone who can write the
table could do that, and they could as well register an endpoint)."""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keel.service.webhook_ports import SecretUnreadable

_PREFIX = "v1."
_NONCE_BYTES = 12
_ASSOCIATED = b"keel-webhook-secret"


def box_key(secret: str) -> bytes:
    """The 32-byte key from the operator's setting (any length of at least 32 characters)."""
    return hashlib.sha256(b"keel-webhook-secrets\0" + secret.encode()).digest()


class AesGcmSecretBox:
    """Seals with `key`; opens with it or any of `fallbacks` (the keys before a rotation, until
    `keel webhooks reseal` has sealed every secret again with the current one)."""

    def __init__(self, key: bytes, fallbacks: tuple[bytes, ...] = ()) -> None:
        self._aead = AESGCM(key)
        self._fallbacks = tuple(AESGCM(old) for old in fallbacks)

    def seal(self, secret: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, secret, _ASSOCIATED)
        return _PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, sealed: str) -> bytes:
        raw = _raw(sealed)
        for aead in (self._aead, *self._fallbacks):
            opened = _opened(aead, raw)
            if opened is not None:
                return opened
        raise SecretUnreadable("the secret was sealed with another key")

    def sealed_with_current_key(self, sealed: str) -> bool:
        return _opened(self._aead, _raw(sealed)) is not None


def _raw(sealed: str) -> bytes:
    if not sealed.startswith(_PREFIX):
        raise SecretUnreadable("unknown sealed-secret format")
    try:
        return base64.urlsafe_b64decode(sealed[len(_PREFIX) :])
    except ValueError:
        raise SecretUnreadable("unknown sealed-secret format") from None


def _opened(aead: AESGCM, raw: bytes) -> bytes | None:
    try:
        return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _ASSOCIATED)
    except (InvalidTag, ValueError):
        return None
