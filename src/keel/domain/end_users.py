"""End users: the people whose profiles these are, authenticated by an OpenID Connect issuer
(docs/end-users.md). An end user may read and change the one profile linked to their subject,
and nothing else."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

# What an issuer may sign end users' tokens with. Never `none`, never an HMAC: a shared secret
# would let anyone holding it (or, with the public key taken as the secret, anyone) sign tokens.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_SUBJECT_LENGTH = 255  # OpenID Connect Core 1.0, 2: `sub` "MUST NOT exceed 255 ASCII characters"
END_USER_PREFIX = "user_"


@dataclass(frozen=True, slots=True)
class EndUser:
    """A subject of an issuer: who an access token was given to."""

    issuer: str
    subject: str

    @property
    def client_id(self) -> str:
        """What stands for this end user where a key id would (rate limits, logs): a hash, so
        that the subject itself is never logged."""
        digest = hashlib.sha256(f"{self.issuer}\0{self.subject}".encode()).hexdigest()[:16]
        return f"{END_USER_PREFIX}{digest}"


@dataclass(frozen=True, slots=True)
class SubjectLink:
    """A profile linked to the end user who owns it, since `linked_at`."""

    profile_id: str
    end_user: EndUser
    linked_at: datetime


class LinkOutcome(StrEnum):
    LINKED = "linked"
    TAKEN = "taken"  # the end user is linked to another profile
    NO_PROFILE = "no_profile"  # the profile's rows are gone (erased meanwhile)


def valid_subject(subject: object) -> bool:
    """1-255 characters of UTF-8 text, none of them a control character (PostgreSQL refuses
    NUL in text)."""
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LENGTH:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in subject):
        return False
    try:
        subject.encode()  # a lone surrogate is no text a database can store
    except UnicodeEncodeError:
        return False
    return True
