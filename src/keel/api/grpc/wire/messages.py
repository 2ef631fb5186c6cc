"""Profiles and profile documents to and from `keel.profiles.v1` messages.

Documents are the JSON shapes the use cases take (a create document, an RFC 7396 merge patch).
A merge patch travels as a partial `Profile` plus a field mask whose paths reach into the
attributes (`attributes.prefs.theme`), and the core rebuilds the same merge patch from them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.domain.errors import FieldError, ValidationFailed
from keel.domain.profile import Email, JSONObject, JSONValue, Link, Profile, ProfileFields
from keel.service.profile_input import MAX_NESTING, nested_deeper_than, shape_errors, unstorable_values
from keel.service.strict_json import MalformedJSON, loads_strict

_OptionalText = Literal["display_name", "bio", "avatar_url", "locale", "timezone"]
_OPTIONAL_TEXT: tuple[_OptionalText, ...] = ("display_name", "bio", "avatar_url", "locale", "timezone")
_TOP_LEVEL = frozenset(("handle", "emails", "links", "attributes", *_OPTIONAL_TEXT))
_PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9_]+$")
MAX_MASK_PATHS = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# One encoder for every call: json.dumps with options builds a new encoder each time.
_compact_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_SECOND = timedelta(seconds=1)


def profile_message(profile: Profile) -> pb.Profile:
    message = pb.Profile()
    fill_profile_message(message, profile)
    return message


def fill_profile_message(message: pb.Profile, profile: Profile) -> None:
    """Write `profile` into an empty message, in place: filling a message that is already part
    of its parent (`response.profiles.add()`) spares the copy that adding a built one costs."""
    f = profile.fields
    message.id = profile.id
    message.handle = f.handle
    for e in f.emails:
        message.emails.add(address=e.address, verified=e.verified, primary=e.primary)
    message.primary_email = f.primary_email
    for link in f.links:
        message.links.add(kind=link.kind, url=link.url)
    message.attributes_json = _compact_json(f.attributes) if f.attributes else "{}"
    message.version = profile.version
    _set_timestamp(message.create_time, profile.created_at)
    _set_timestamp(message.update_time, profile.updated_at)
    if f.display_name is not None:
        message.display_name = f.display_name
    if f.bio is not None:
        message.bio = f.bio
    if f.avatar_url is not None:
        message.avatar_url = f.avatar_url
    if f.locale is not None:
        message.locale = f.locale
    if f.timezone is not None:
        message.timezone = f.timezone


def profile_from_message(message: pb.Profile) -> Profile:
    """A profile the core sent: already valid, so it is taken as it is."""
    attributes = json.loads(message.attributes_json) if message.HasField("attributes_json") else {}
    fields = ProfileFields(
        handle=message.handle,
        emails=tuple(Email(e.address, e.verified, e.primary) for e in message.emails),
        links=tuple(Link(link.kind, link.url) for link in message.links),
        attributes=attributes,
        **{name: getattr(message, name) for name in _OPTIONAL_TEXT if message.HasField(name)},
    )
    return Profile(
        id=message.id,
        fields=fields,
        version=message.version,
        created_at=message.create_time.ToDatetime(tzinfo=UTC),
        updated_at=message.update_time.ToDatetime(tzinfo=UTC),
    )


# -- create documents ------------------------------------------------------------------------


def document_message(document: JSONValue) -> pb.Profile:
    """A create document as a message; `ValidationFailed` (with the errors the use case would
    report) when a value cannot be carried by the typed message."""
    if not isinstance(document, dict):
        raise ValidationFailed([FieldError("", "must be a JSON object")])
    _refuse_uncarriable(document)
    message = pb.Profile()
    for name, value in document.items():
        if value is not None:  # an optional field sent as null is a field left unset
            _set_field(message, name, value)
    return message


def document_from_message(message: pb.Profile) -> JSONObject:
    document: JSONObject = {
        "handle": message.handle,
        "emails": [
            {"address": e.address, "verified": e.verified, "primary": e.primary} for e in message.emails
        ],
        "links": [{"kind": link.kind, "url": link.url} for link in message.links],
    }
    for name in _OPTIONAL_TEXT:
        if message.HasField(name):
            document[name] = getattr(message, name)
    if message.HasField("attributes_json"):
        document["attributes"] = _json(message.attributes_json, "/attributes")
    return document


# -- merge patches ---------------------------------------------------------------------------


def patch_message(profile_id: str, patch: JSONObject) -> tuple[pb.Profile, FieldMask]:
    """An RFC 7396 merge patch as a partial profile and the paths it changes."""
    _refuse_uncarriable(patch)
    message = pb.Profile(id=profile_id)
    paths: list[str] = []
    attributes: JSONObject = {}
    for name, value in patch.items():
        if name == "attributes" and isinstance(value, dict) and value:
            for segments, leaf in _leaves(value):
                paths.append(".".join(["attributes", *(_quote(s) for s in segments)]))
                _put(attributes, segments, leaf)
            continue
        paths.append(name)
        if value is not None:
            _set_field(message, name, value)
    if attributes:
        message.attributes_json = _compact_json(attributes)
    return message, FieldMask(paths=paths)


def patch_from_message(message: pb.Profile, mask: FieldMask) -> JSONObject:
    """The merge patch a partial profile and its mask stand for (see `patch_message`)."""
    patch: JSONObject = {}
    document = document_from_message(message)
    attribute_values = document.get("attributes")
    for segments in _mask_paths(mask):
        name = segments[0]
        if name == "attributes" and len(segments) > 1:
            value = _get(attribute_values, segments[1:])
            nested = patch.setdefault("attributes", {})
            assert isinstance(nested, dict)  # `_mask_paths` refuses "attributes" beside "attributes.x"
            _put(nested, segments[1:], value)
        elif name in ("handle", "emails", "links"):
            patch[name] = document[name]
        else:
            patch[name] = document.get(name)
    return patch


def _mask_paths(mask: FieldMask) -> list[list[str]]:
    """The mask's paths as segments; `ValidationFailed` for unknown fields, paths into a field
    that has no parts, too many or too deep paths, and paths that overlap (`a` and `a.b`)."""
    if len(mask.paths) > MAX_MASK_PATHS:
        raise ValidationFailed([FieldError("/update_mask", f"at most {MAX_MASK_PATHS} paths")])
    paths = [_split(path) for path in mask.paths]
    for segments in paths:
        if segments[0] not in _TOP_LEVEL:
            raise ValidationFailed([FieldError(f"/{segments[0]}", "unknown field")])
        if len(segments) > 1 and segments[0] != "attributes":
            raise ValidationFailed([FieldError("/update_mask", f"`{segments[0]}` has no parts to name")])
        if len(segments) > MAX_NESTING:
            raise ValidationFailed([FieldError("/update_mask", f"paths of at most {MAX_NESTING} parts")])
    ordered = sorted(tuple(segments) for segments in paths)
    for shorter, longer in itertools.pairwise(ordered):
        if longer[: len(shorter)] == shorter:
            raise ValidationFailed([FieldError("/update_mask", "paths overlap: name a field once")])
    return paths


def _leaves(value: JSONObject, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], JSONValue]]:
    """Each non-object value (or empty object) in a patch, with its path: a merge patch's
    nested objects merge, so only their leaves change anything."""
    for key, item in value.items():
        if isinstance(item, dict) and item:
            yield from _leaves(item, (*prefix, key))
        else:
            yield (*prefix, key), item


def _put(target: JSONObject, segments: tuple[str, ...] | list[str], value: JSONValue) -> None:
    for segment in segments[:-1]:
        child = target.setdefault(segment, {})
        assert isinstance(child, dict)
        target = child
    target[segments[-1]] = value


def _get(source: JSONValue, segments: list[str]) -> JSONValue:
    for segment in segments:
        if not isinstance(source, dict):
            return None
        source = source.get(segment)
    return source


def _quote(segment: str) -> str:
    # AIP-161: a map key that is not a plain identifier is quoted in backticks.
    return segment if _PLAIN_SEGMENT.match(segment) else "`" + segment.replace("`", "``") + "`"


def _split(path: str) -> list[str]:
    segments: list[str] = []
    current: list[str] = []
    quoted = False  # a quoted segment may be empty (an attribute named "")
    index = 0
    while index < len(path):
        char = path[index]
        if char == "`":
            end = index + 1
            while True:
                end = path.find("`", end)
                if end == -1:
                    raise ValidationFailed([FieldError("/update_mask", f"unterminated quote in {path!r}")])
                if path[end + 1 : end + 2] == "`":
                    end += 2
                    continue
                break
            current.append(path[index + 1 : end].replace("``", "`"))
            quoted = True
            index = end + 1
        elif char == ".":
            if not current and not quoted:
                raise ValidationFailed([FieldError("/update_mask", f"empty segment in {path!r}")])
            segments.append("".join(current))
            current, quoted = [], False
            index += 1
        else:
            current.append(char)
            index += 1
    if not current and not quoted:
        raise ValidationFailed([FieldError("/update_mask", f"empty segment in {path!r}")])
    segments.append("".join(current))
    return segments


# -- helpers ---------------------------------------------------------------------------------


def _refuse_uncarriable(document: JSONObject) -> None:
    """Values of the wrong type (or text that is not Unicode) cannot go into a typed message:
    refuse them here with the errors the use case itself would give."""
    unstorable = unstorable_values(document)
    if unstorable:
        raise ValidationFailed(unstorable)  # what the use case checks first, and alone
    if not _carriable(document):
        raise ValidationFailed(shape_errors(document) or [FieldError("", "cannot be carried")])


def _carriable(document: JSONObject) -> bool:
    for name, value in document.items():
        if name not in _TOP_LEVEL:
            return False
        if name == "attributes":
            continue  # any JSON value travels as JSON
        if value is None and name not in ("handle", "emails"):
            continue
        if name == "handle" or name in _OPTIONAL_TEXT:
            if not _text_ok(value):
                return False
        elif name == "emails":
            if not isinstance(value, list) or not all(_email_ok(item) for item in value):
                return False
        elif not isinstance(value, list) or not all(_link_ok(item) for item in value):
            return False
    return True


def _text_ok(value: object) -> bool:
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _email_ok(item: object) -> bool:
    return (
        isinstance(item, dict)
        and item.keys() <= {"address", "verified", "primary"}
        and _text_ok(item.get("address"))
        and isinstance(item.get("verified", False), bool)
        and isinstance(item.get("primary", False), bool)
    )


def _link_ok(item: object) -> bool:
    return (
        isinstance(item, dict)
        and item.keys() <= {"kind", "url"}
        and all(_text_ok(item.get(key)) for key in ("kind", "url"))
    )


def _set_field(message: pb.Profile, name: str, value: JSONValue) -> None:
    if name == "emails":
        assert isinstance(value, list)
        message.emails.extend(pb.Email(**item) for item in value if isinstance(item, dict))  # type: ignore[arg-type]
    elif name == "links":
        assert isinstance(value, list)
        message.links.extend(pb.Link(**item) for item in value if isinstance(item, dict))  # type: ignore[arg-type]
    elif name == "attributes":
        if value is not None:
            message.attributes_json = _compact_json(value)
    else:
        setattr(message, name, value)


def _json(text: str, location: str) -> JSONValue:
    try:
        value: JSONValue = loads_strict(text)
    except MalformedJSON as error:  # duplicate keys, a BOM, bad syntax or far too deep
        raise ValidationFailed([FieldError(location, f"must be JSON: {error.detail}")]) from None
    if nested_deeper_than(value, MAX_NESTING - 1):
        raise ValidationFailed([FieldError(location, f"nested deeper than {MAX_NESTING - 1} levels")])
    return value


def _set_timestamp(stamp: Timestamp, value: datetime) -> None:
    # Timestamp.FromDatetime goes through calendar.timegm, several times slower than this
    # integer arithmetic (exact, unlike a float from .timestamp()).
    stamp.seconds = (value - _EPOCH) // _SECOND
    stamp.nanos = value.microsecond * 1000


def unix_micros(value: datetime) -> int:
    """An aware datetime as whole microseconds since the Unix epoch (exact)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_unix_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
