"""Turning a caller's JSON document into validated `ProfileFields`, and back.

The same document shape serves create (the whole document) and update (the current document
with a merge patch applied), whatever protocol it came in on. Every problem found is reported
with its location, not just the first.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import ipaddress
import json
import math
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import idna
import langcodes
from email_validator import EmailNotValidError, validate_email

from keel.domain.errors import FieldError, ValidationFailed
from keel.domain.profile import (
    HANDLE_RULE,
    Email,
    JSONObject,
    JSONValue,
    Link,
    ProfileFields,
    identity_errors,
)
from keel.service.attributes import AttributePolicy

MAX_EMAILS = 10
MAX_LINKS = 20
MAX_DISPLAY_NAME = 100
MAX_BIO = 1000
MAX_URL = 2048
# Bounds checked before any parser sees a string (langcodes recurses once per subtag; the email
# and URL parsers are linear but need not read a megabyte to refuse it).
MAX_HANDLE_INPUT = 64  # before trimming; a valid handle has 3-30 characters
MAX_EMAIL = 320
MAX_LOCALE = 35  # RFC 5646's longest well-formed tag a registry-conformant speaker needs
MAX_TIMEZONE = 64
# The largest profile, as compact JSON, whatever protocol wrote it: a read returns it whole.
MAX_PROFILE_BYTES = 64 * 1024
# Deepest a profile document may nest (attributes one level less), whatever the protocol.
MAX_NESTING = 32

_FIELDS = frozenset(
    {"handle", "emails", "display_name", "bio", "avatar_url", "locale", "timezone", "links", "attributes"}
)
_EMAIL_FIELDS = frozenset({"address", "verified", "primary"})
_LINK_FIELDS = frozenset({"kind", "url"})


def _iana_timezones() -> frozenset[str]:
    """The IANA zone names of the pinned `tzdata` package: the same on every host (the
    standard library's `available_timezones()` adds whatever the host's zoneinfo folder holds,
    such as `localtime`), so what Keel accepts and documents does not depend on the machine."""
    return frozenset(importlib.resources.files("tzdata").joinpath("zones").read_text().split())


# Read once: the set of IANA names does not change while the process runs.
TIMEZONES = _iana_timezones()
# One encoder for every call: json.dumps with options builds a new encoder each time.
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Collector:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, location: str, message: str) -> None:
        self.errors.append(FieldError(location, message))


def parse_profile_fields(
    document: JSONValue, policy: AttributePolicy, *, hidden: frozenset[str] = frozenset()
) -> ProfileFields:
    """Validate and normalize a profile document. Raises `ValidationFailed` listing every error.
    `hidden`: attributes in the document that the caller may not read, whose errors must not
    show their values (see `AttributePolicy.errors`)."""
    found = _Collector()
    if not isinstance(document, dict):
        raise ValidationFailed([FieldError("", "must be a JSON object")])
    unstorable = unstorable_values(document)
    if unstorable:
        # Checked first: NUL characters, lone surrogates and NaN/Infinity break the validators
        # below, the database or the JSON encoder, whichever meets them first.
        raise ValidationFailed(unstorable)
    for name in document.keys() - _FIELDS:
        found.add(f"/{name}", "unknown field")

    handle = _handle(document.get("handle"), found)
    emails = _emails(document.get("emails"), found)
    found.errors.extend(identity_errors(handle, emails))
    display_name = _text(document.get("display_name"), "/display_name", MAX_DISPLAY_NAME, found)
    bio = _text(document.get("bio"), "/bio", MAX_BIO, found)
    avatar_url = _url(document.get("avatar_url"), "/avatar_url", ("https",), found)
    locale = _locale(document.get("locale"), found)
    timezone = _timezone(document.get("timezone"), found)
    links = _links(document.get("links"), found)
    attributes = _attributes(document.get("attributes"), policy, hidden, found)

    if found.errors or handle is None or emails is None:
        raise ValidationFailed(found.errors)
    fields = ProfileFields(
        handle=handle,
        emails=emails,
        display_name=display_name,
        bio=bio,
        avatar_url=avatar_url,
        locale=locale,
        timezone=timezone,
        links=links,
        attributes=attributes,
    )
    size = len(_compact_json(fields_document(fields)).encode())
    if size > MAX_PROFILE_BYTES:
        raise ValidationFailed(
            [FieldError("", f"the profile is {size} bytes as JSON; at most {MAX_PROFILE_BYTES} are allowed")]
        )
    return fields


def shape_errors(document: JSONObject) -> list[FieldError]:
    """The errors `parse_profile_fields` finds in the fields present in `document` on their own:
    unstorable values, unknown names, and each field's type and form. Not the rules that need
    the whole profile (identity) or the operator's schema (attributes). For adapters that must
    turn a partial document into a typed message and refuse what cannot be carried."""
    unstorable = unstorable_values(document)
    if unstorable:
        return unstorable
    found = _Collector()
    for name in document.keys() - _FIELDS:
        found.add(f"/{name}", "unknown field")
    checks: dict[str, Callable[[Any], object]] = {
        "handle": lambda v: _handle(v, found),
        "emails": lambda v: _emails(v, found),
        "display_name": lambda v: _text(v, "/display_name", MAX_DISPLAY_NAME, found),
        "bio": lambda v: _text(v, "/bio", MAX_BIO, found),
        "avatar_url": lambda v: _url(v, "/avatar_url", ("https",), found),
        "locale": lambda v: _locale(v, found),
        "timezone": lambda v: _timezone(v, found),
        "links": lambda v: _links(v, found),
    }
    for name, check in checks.items():
        if name in document:
            check(document[name])
    if "attributes" in document and not isinstance(document["attributes"], dict | None):
        found.add("/attributes", "must be a JSON object")
    return found.errors


def fields_document(fields: ProfileFields) -> JSONObject:
    """The editable document of a profile: what a merge patch applies to."""
    document: JSONObject = {
        "handle": fields.handle,
        "emails": [
            {"address": e.address, "verified": e.verified, "primary": e.primary} for e in fields.emails
        ],
        "links": [{"kind": link.kind, "url": link.url} for link in fields.links],
        "attributes": dict(fields.attributes),
    }
    optional: dict[str, str | None] = {
        "display_name": fields.display_name,
        "bio": fields.bio,
        "avatar_url": fields.avatar_url,
        "locale": fields.locale,
        "timezone": fields.timezone,
    }
    document.update({name: value for name, value in optional.items() if value is not None})
    return document


def unstorable_values(document: JSONValue) -> list[FieldError]:
    """Values no protocol may store: iterative, so a deep document cannot exhaust the stack."""
    errors: list[FieldError] = []
    pending: list[tuple[str, object]] = [("", document)]
    while pending:
        location, value = pending.pop()
        if isinstance(value, dict):
            pending.extend((f"{location}/{name}", item) for name, item in value.items())
            pending.extend((f"{location}/{name}", name) for name in value)
        elif isinstance(value, list):
            pending.extend((f"{location}/{index}", item) for index, item in enumerate(value))
        elif isinstance(value, str):
            if "\x00" in value:
                errors.append(FieldError(location, "must not contain NUL characters"))
            elif not _is_utf8(value):
                errors.append(FieldError(location, "must be valid Unicode text"))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append(FieldError(location, "must be a finite number"))
    return errors


def nested_deeper_than(value: object, limit: int) -> bool:
    """Iterative, so that a hostile document cannot exhaust the stack while being measured."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return False


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _handle(value: Any, found: _Collector) -> str | None:
    if not isinstance(value, str):
        found.add("/handle", "required, a string")
        return None
    if len(value) > MAX_HANDLE_INPUT:
        found.add("/handle", HANDLE_RULE)
        return None
    return value.strip().lower()


def _emails(value: Any, found: _Collector) -> tuple[Email, ...] | None:
    """The emails, or None when some could not be read (their errors are already reported)."""
    if not isinstance(value, list) or not value:
        found.add("/emails", "required, a non-empty list")
        return None
    if len(value) > MAX_EMAILS:
        found.add("/emails", f"at most {MAX_EMAILS} emails")
        return None
    emails: list[Email] = []
    for index, item in enumerate(value):
        location = f"/emails/{index}"
        if not isinstance(item, dict):
            found.add(location, "must be an object")
            continue
        for name in item.keys() - _EMAIL_FIELDS:
            found.add(f"{location}/{name}", "unknown field")
        address = _email_address(item.get("address"), f"{location}/address", found)
        verified = _flag(item.get("verified", False), f"{location}/verified", found)
        primary = _flag(item.get("primary", False), f"{location}/primary", found)
        if address is not None:
            emails.append(Email(address=address, verified=verified, primary=primary))
    return tuple(emails) if len(emails) == len(value) else None


def _email_address(value: Any, location: str, found: _Collector) -> str | None:
    if not isinstance(value, str):
        found.add(location, "required, a string")
        return None
    if len(value) > MAX_EMAIL:
        found.add(location, f"at most {MAX_EMAIL} characters")
        return None
    try:
        return canonical_email(value)
    except EmailNotValidError as error:
        found.add(location, str(error))
        return None


def canonical_email(address: str) -> str:
    """The one form of an address that writes store and searches look up: NFKC (fullwidth and
    other compatibility forms fold to their plain letters), the domain IDNA-mapped and shown in
    Unicode (`xn--bcher-kva.example` and `BÜCHER.example` are `bücher.example`). Uniqueness is
    then case-insensitive over this form (`Email.normalized`). `EmailNotValidError` if invalid."""
    # No DNS: deliverability checks would make validation slow and network-dependent.
    return validate_email(unicodedata.normalize("NFKC", address), check_deliverability=False).normalized


def email_search_key(text: str) -> str:
    """What an `email` filter looks up: the canonical, case-folded form of a valid address, and
    for anything else the text as given (NFKC, lower case), which matches no stored address."""
    text = unicodedata.normalize("NFKC", text.strip())
    if len(text) <= MAX_EMAIL:
        with contextlib.suppress(EmailNotValidError):
            text = canonical_email(text)
    return text.lower()


def _flag(value: Any, location: str, found: _Collector) -> bool:
    if not isinstance(value, bool):
        found.add(location, "must be true or false")
        return False
    return value


def _text(value: Any, location: str, limit: int, found: _Collector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        found.add(location, "must be a string")
        return None
    text = value.strip()
    if len(text) > limit:
        found.add(location, f"at most {limit} characters")
    return text or None


def _url(value: Any, location: str, schemes: tuple[str, ...], found: _Collector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_URL:
        found.add(location, f"must be a URL of at most {MAX_URL} characters")
        return None
    url = canonical_url(value, schemes)
    if url is None:
        found.add(location, f"must be an absolute {' or '.join(schemes)} URL")
    return url


def canonical_url(value: str, schemes: tuple[str, ...]) -> str | None:
    """The URL in one form, or None when it is not an absolute URL of one of `schemes`: scheme
    in lower case, host IDNA-mapped to its ASCII form (`a。com` and `A.com` are `a.com`,
    `bücher.example` is `xn--bcher-kva.example`), the port checked, no user or password; the
    path, query and fragment as sent. What allow- and deny-lists of hosts compare is then what
    a browser would visit."""
    if any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError when out of range or not a number
        host = parts.hostname
    except ValueError:
        return None
    if (
        parts.scheme.lower() not in schemes
        or not host
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    ascii_host = _ascii_host(host)
    if ascii_host is None:
        return None
    netloc = ascii_host if port is None else f"{ascii_host}:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, parts.fragment))


def _ascii_host(host: str) -> str | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    try:
        name = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    # A name whose last label is all digits is no domain name, and not an IPv4 address either.
    if name.rstrip(".").rpartition(".")[2].isdigit():
        return None
    return name


def _locale(value: Any, found: _Collector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_LOCALE or not langcodes.tag_is_valid(value):
        found.add("/locale", f"must be a BCP 47 tag of at most {MAX_LOCALE} characters, such as en-GB")
        return None
    return langcodes.standardize_tag(value)


def _timezone(value: Any, found: _Collector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TIMEZONE or value not in TIMEZONES:
        found.add("/timezone", "must be an IANA time zone name, such as Europe/Paris")
        return None
    return value


def _links(value: Any, found: _Collector) -> tuple[Link, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_LINKS:
        found.add("/links", f"must be a list of at most {MAX_LINKS} links")
        return ()
    links: list[Link] = []
    for index, item in enumerate(value):
        location = f"/links/{index}"
        if not isinstance(item, dict):
            found.add(location, "must be an object")
            continue
        for name in item.keys() - _LINK_FIELDS:
            found.add(f"{location}/{name}", "unknown field")
        kind = item.get("kind")
        if not isinstance(kind, str) or not (1 <= len(kind) <= 30):
            found.add(f"{location}/kind", "required, 1-30 characters")
            continue
        if item.get("url") is None:
            found.add(f"{location}/url", "required, an absolute https or http URL")
            continue
        url = _url(item.get("url"), f"{location}/url", ("https", "http"), found)
        if url is not None:
            links.append(Link(kind=kind.strip().lower(), url=url))
    return tuple(links)


def _attributes(value: Any, policy: AttributePolicy, hidden: frozenset[str], found: _Collector) -> JSONObject:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        found.add("/attributes", "must be a JSON object")
        return {}
    for error in policy.errors(value, hidden=hidden):
        found.add(error.field, error.message)
    return value
