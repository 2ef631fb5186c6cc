"""A local OpenID Connect issuer for tests: signing keys made in the test, a JWKS served over
HTTP on a loopback port (counting its fetches), and tokens signed as a real issuer signs them,
or forged as an attacker would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://login.keel.test/"
AUDIENCE = "keel-api"

_SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalIssuer:
    """Serves `/jwks.json` on 127.0.0.1 until `close`. Starts with one RSA key (RS256) and one EC
    key (ES256); `rotate` adds a key and may drop the old ones."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys: dict[str, _SigningKey] = {}
        self.fetches = 0
        self.add_key("RS256")
        self.add_key("ES256")
        self._lock = threading.Lock()
        issuer_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                with issuer_self._lock:
                    issuer_self.fetches += 1
                    body = json.dumps(issuer_self.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def add_key(self, algorithm: str) -> str:
        key: _SigningKey = (
            ec.generate_private_key(ec.SECP256R1())
            if algorithm.startswith("ES")
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        kid = f"{algorithm.lower()}-{secrets.token_hex(4)}"
        self.keys[kid] = key
        return kid

    def rotate(self, algorithm: str = "RS256", *, drop: Iterable[str] = ()) -> str:
        kid = self.add_key(algorithm)
        for old in drop:
            del self.keys[old]
        return kid

    def kid(self, algorithm: str) -> str:
        return next(kid for kid in self.keys if kid.startswith(algorithm.lower()))

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            public = key.public_key()
            jwk = json.loads(
                RSAAlgorithm.to_jwk(public)
                if isinstance(public, rsa.RSAPublicKey)
                else ECAlgorithm.to_jwk(public)
            )
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def claims(self, subject: str, *, lifetime: int = 300, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + lifetime,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self,
        subject: str,
        *,
        algorithm: str = "RS256",
        kid: str | None = None,
        lifetime: int = 300,
        **overrides: Any,
    ) -> str:
        """A token signed as the issuer signs them; `overrides` replace claims (None drops one)."""
        kid = kid or self.kid(algorithm)
        return jwt.encode(
            self.claims(subject, lifetime=lifetime, **overrides),
            self.keys[kid],
            algorithm=algorithm,
            headers={"kid": kid},
        )

    # -- forgeries -------------------------------------------------------------------------

    def unsigned(self, subject: str) -> str:
        """`alg: none`: no signature at all."""
        header = {"alg": "none", "typ": "JWT", "kid": self.kid("RS256")}
        body = self.claims(subject)
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}."

    def hmac_with_public_key(self, subject: str) -> str:
        """HS256 "signed" with the issuer's RSA public key (PEM), which anyone can fetch: the
        confusion attack on verifiers that take the algorithm from the token."""
        kid = self.kid("RS256")
        pem = (
            self.keys[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        signing_input = (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(subject)).encode())}"
        )
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def signed_by_stranger(self, subject: str) -> str:
        """Signed with a key the issuer never published, under a `kid` it did publish."""
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = self.kid("RS256")
        return jwt.encode(self.claims(subject), stranger, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
