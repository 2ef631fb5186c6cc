"""The profile aggregate.

A profile is read and written whole: its emails and links are part of it, and every change
produces a new version. Field-level validation of raw input happens before a `ProfileFields`
exists (see `keel.service.profile_input`); this module keeps the invariants that must hold for
any profile, whatever the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeAlias

from keel.domain.errors import FieldError, ValidationFailed

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = dict[str, JSONValue]

HANDLE_PATTERN = re.compile(r"^[a-z0-9_]{3,30}$")
HANDLE_RULE = "must be 3-30 characters of a-z, 0-9 and _"


@dataclass(frozen=True, slots=True)
class Email:
    address: str
    verified: bool = False
    primary: bool = False

    @property
    def normalized(self) -> str:
        """Uniqueness of addresses is case-insensitive across live profiles."""
        return self.address.lower()


@dataclass(frozen=True, slots=True)
class Link:
    kind: str
    url: str


@dataclass(frozen=True, slots=True)
class ProfileFields:
    """Everything a caller may set on a profile; already validated and normalized."""

    handle: str
    emails: tuple[Email, ...]
    display_name: str | None = None
    bio: str | None = None
    avatar_url: str | None = None
    locale: str | None = None
    timezone: str | None = None
    links: tuple[Link, ...] = ()
    attributes: JSONObject = field(default_factory=dict)

    def __post_init__(self) -> None:
        errors = identity_errors(self.handle, self.emails)
        if errors:
            raise ValidationFailed(errors)

    @property
    def primary_email(self) -> str:
        """The address of the one email marked primary (fields always have exactly one)."""
        return next(email.address for email in self.emails if email.primary)


def identity_errors(handle: str | None, emails: Sequence[Email] | None) -> list[FieldError]:
    """The rules on how a profile is found: its handle's form, and exactly one primary among
    distinct emails. Either part may be None when it could not be read at all."""
    errors: list[FieldError] = []
    if handle is not None and not HANDLE_PATTERN.match(handle):
        errors.append(FieldError("/handle", HANDLE_RULE))
    if emails is not None:
        if sum(1 for email in emails if email.primary) != 1:
            errors.append(FieldError("/emails", "exactly one email must be primary"))
        seen: set[str] = set()
        for index, email in enumerate(emails):
            if email.normalized in seen:
                errors.append(FieldError(f"/emails/{index}/address", "listed twice"))
            seen.add(email.normalized)
    return errors


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    fields: ProfileFields
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    @property
    def handle(self) -> str:
        return self.fields.handle

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @classmethod
    def create(cls, profile_id: str, fields: ProfileFields, now: datetime) -> Profile:
        return cls(id=profile_id, fields=fields, version=1, created_at=now, updated_at=now)

    def revise(self, fields: ProfileFields, now: datetime) -> Profile:
        """A new version of this profile with `fields`; version and updated_at move on."""
        return replace(self, fields=fields, version=self.version + 1, updated_at=now)

    def delete(self, now: datetime) -> Profile:
        """Soft delete: the row stays, its handle and emails are freed for others."""
        return replace(self, version=self.version + 1, updated_at=now, deleted_at=now)
