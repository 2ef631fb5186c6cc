"""Wire schemas of the REST API (newest version). Only this package knows these shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Input(BaseModel):
    # Unknown fields are an error, not silently dropped: a typo must not look like success.
    model_config = ConfigDict(extra="forbid")


class EmailIn(_Input):
    address: str = Field(max_length=320, examples=["ada@example.com"])
    verified: bool = False
    primary: bool = False


class LinkIn(_Input):
    kind: str = Field(max_length=30, examples=["website"])
    url: str = Field(max_length=2048, examples=["https://example.com"])


class ProfileCreate(_Input):
    handle: str = Field(examples=["ada_l"], description="3-30 of a-z, 0-9 and _; unique, case-insensitive")
    emails: list[EmailIn] = Field(description="Exactly one must be primary.")
    display_name: str | None = Field(default=None, max_length=100)
    bio: str | None = Field(default=None, max_length=1000)
    avatar_url: str | None = Field(default=None, description="https only")
    locale: str | None = Field(default=None, examples=["en-GB"], description="BCP 47")
    timezone: str | None = Field(default=None, examples=["Europe/London"], description="IANA")
    links: list[LinkIn] = Field(default_factory=list, max_length=20)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Validated by the operator's JSON Schema."
    )


class EmailOut(BaseModel):
    address: str
    verified: bool
    primary: bool


class LinkOut(BaseModel):
    kind: str
    url: str


class ProfileOut(BaseModel):
    id: str = Field(examples=["eu1_01JF3Z6Y2Q9V6C8D7E5F4G3H2J"])
    handle: str
    emails: list[EmailOut]
    display_name: str | None
    bio: str | None
    avatar_url: str | None
    locale: str | None
    timezone: str | None
    links: list[LinkOut]
    attributes: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


class ProfileList(BaseModel):
    items: list[ProfileOut]
    next_cursor: str | None


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldProblem] | None = None
