"""Wire schemas of the REST API (newest version). Only this package knows these shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict, JsonValue

from keel.service.profile_input import TIMEZONES


class _Input(BaseModel):
    # Unknown fields are an error, not silently dropped: a typo must not look like success.
    model_config = ConfigDict(extra="forbid")


class EmailIn(_Input):
    # `format: email` documents the rule; the use case checks it (email-validator), for every protocol.
    address: str = Field(max_length=320, examples=["ada@example.com"], json_schema_extra={"format": "email"})
    verified: bool = False
    primary: bool = False


# URL rules as the use case applies them (absolute, a host, no whitespace), documented here.
_HOST = r"[^\s/?#@\[\]:][^\s/?#@\[\]]*"
_AVATAR_URL_RULES: JsonDict = {"maxLength": 2048, "pattern": rf"^[Hh][Tt][Tt][Pp][Ss]://{_HOST}([/?#]\S*)?$"}
_LINK_URL_RULES: JsonDict = {"pattern": rf"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}([/?#]\S*)?$"}


# The names the use case accepts (the pinned IANA database), listed for clients.
_TIMEZONE_RULES: JsonDict = {"enum": list[JsonValue](sorted(TIMEZONES))}


class LinkIn(_Input):
    kind: str = Field(max_length=30, examples=["website"], json_schema_extra={"minLength": 1})
    url: str = Field(max_length=2048, examples=["https://example.com"], json_schema_extra=_LINK_URL_RULES)


_HANDLE_RULES: JsonDict = {"pattern": r"^\s*[A-Za-z0-9_]{3,30}\s*$"}
_EMAILS_RULES: JsonDict = {
    "minItems": 1,
    "maxItems": 10,
    "contains": {"type": "object", "properties": {"primary": {"const": True}}, "required": ["primary"]},
    "minContains": 1,
    "maxContains": 1,
}


class ProfileCreate(_Input):
    handle: str = Field(
        examples=["ada_l"],
        description="3-30 of a-z, 0-9 and _; unique, case-insensitive",
        # Documented, not enforced here: the use case checks it (after trimming and lowering),
        # the same for every protocol.
        json_schema_extra=_HANDLE_RULES,
    )
    emails: list[EmailIn] = Field(
        description="1-10 addresses; exactly one must be primary.",
        # Documented for clients and contract tests (JSON Schema 2020-12 `contains`); enforced by
        # the use case, which reports it with the other errors.
        json_schema_extra=_EMAILS_RULES,
    )
    display_name: str | None = Field(default=None, max_length=100)
    bio: str | None = Field(default=None, max_length=1000)
    avatar_url: str | None = Field(
        default=None, description="https only", json_schema_extra=_AVATAR_URL_RULES
    )
    region: str | None = Field(
        default=None,
        examples=["eu1"],
        description="Where the profile lives (its id's prefix). Optional: this service's region. "
        "Another region's is refused with 421 `misdirected`, naming it (docs/residency.md).",
        json_schema_extra={"pattern": "^[a-z][a-z0-9]{1,9}$"},
    )
    locale: str | None = Field(default=None, examples=["en-GB"], description="BCP 47")
    timezone: str | None = Field(
        default=None, examples=["Europe/London"], description="IANA", json_schema_extra=_TIMEZONE_RULES
    )
    links: list[LinkIn] = Field(default_factory=list, max_length=20)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Validated by the operator's JSON Schema."
    )


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_EMAILS_REF = {"$ref": "#/components/schemas/EmailIn"}
_LINKS_REF = {"$ref": "#/components/schemas/LinkIn"}
# The body of PATCH /v1/profiles/{id} (RFC 7396), read by the route itself rather than through a
# model: each member replaces that field, null removes an optional one; attributes merge.
MERGE_PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "handle": {"type": "string", **_HANDLE_RULES},
        "emails": {"type": "array", "items": _EMAILS_REF, **_EMAILS_RULES},
        "display_name": _nullable({"type": "string", "maxLength": 100}),
        "bio": _nullable({"type": "string", "maxLength": 1000}),
        "avatar_url": _nullable({"type": "string", **_AVATAR_URL_RULES}),
        "locale": _nullable({"type": "string"}),
        "timezone": _nullable({"type": "string", **_TIMEZONE_RULES}),
        "links": _nullable({"type": "array", "items": _LINKS_REF, "maxItems": 20}),
        "attributes": _nullable({"type": "object"}),
    },
}


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
    primary_email: str = Field(description="The address of the email marked primary.")
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


class ListLinks(BaseModel):
    next: str | None = Field(
        description="The next page: this list's path and query with its cursor, to follow as it is; "
        "null on the last page."
    )


class ProfileList(BaseModel):
    items: list[ProfileOut]
    links: ListLinks


class HandleCheck(BaseModel):
    handle: str
    available: bool = Field(description="No live profile holds the handle: a create may take it now.")


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
    home_region: str | None = Field(
        default=None,
        description="With `misdirected`: the region the profile lives in, to send the request to.",
    )


class EndUserLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(
        min_length=1,
        max_length=255,
        description="The `sub` of the end user, as the configured OpenID Connect issuer names them.",
    )


class EndUserLink(BaseModel):
    profile_id: str
    issuer: str
    subject: str
    linked_at: datetime
