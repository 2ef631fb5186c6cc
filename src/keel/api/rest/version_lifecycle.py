"""Where each API version stands: current, or deprecated since its successor was released (RFC
9745 `Deprecation`), with the date the operator set for it to stop being served (RFC 8594
`Sunset`), and what each version changed. Read from the version bundle, so the headers,
`GET /v1/versions` and the changelog say the same thing without writing it twice.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from email.utils import formatdate
from typing import Any

from cadwyn import VersionBundle

from keel.api.rest.version_changes import QUERY_DEFAULTS

VERSIONS_PATH = "/v1/versions"


@dataclass(frozen=True)
class VersionStatus:
    version: str
    changes: tuple[tuple[str, str], ...]  # (name, description) of what this version changed
    deprecated_since: date | None  # the day its successor was released; None for the newest
    sunset: date | None  # set by the operator (`KEEL_API_SUNSETS`)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The answer headers of a request made in this version: none for the current one."""
        if self.deprecated_since is None:
            return []
        headers = [
            # RFC 9745: a Structured Field Date, seconds since the epoch.
            (b"deprecation", b"@%d" % _epoch(self.deprecated_since)),
            (b"link", f'<{VERSIONS_PATH}>; rel="deprecation"; type="application/json"'.encode()),
        ]
        if self.sunset is not None:
            # RFC 8594: an HTTP-date.
            headers.append((b"sunset", formatdate(_epoch(self.sunset), usegmt=True).encode()))
            headers.append((b"link", f'<{VERSIONS_PATH}>; rel="sunset"; type="application/json"'.encode()))
        return headers

    def document(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": "current" if self.deprecated_since is None else "deprecated",
            "deprecated_since": self.deprecated_since.isoformat() if self.deprecated_since else None,
            "sunset": self.sunset.isoformat() if self.sunset else None,
            "changes": [{"name": name, "description": text} for name, text in self.changes],
        }


def _epoch(day: date) -> int:
    return calendar.timegm(day.timetuple())


def _description(change: type) -> str:
    return " ".join(str(getattr(change, "description", "")).split())


def lifecycle(bundle: VersionBundle, sunsets: Mapping[str, date]) -> dict[str, VersionStatus]:
    """Each version's status, newest first. A sunset may be set for a deprecated version only,
    and not before it was deprecated: anything else is a configuration error."""
    values = [str(v) for v in bundle.version_values]
    unknown = set(sunsets) - set(values[1:])
    if unknown:
        raise ValueError(
            f"KEEL_API_SUNSETS names {', '.join(sorted(unknown))}: a sunset can be set only for an "
            f"older version ({', '.join(values[1:]) or 'there is none'})"
        )
    statuses: dict[str, VersionStatus] = {}
    successor: date | None = None
    for version in bundle.versions:
        value = str(version.value)
        sunset = sunsets.get(value)
        if sunset is not None and successor is not None and sunset < successor:
            raise ValueError(f"KEEL_API_SUNSETS: {value} cannot sunset before its deprecation ({successor})")
        statuses[value] = VersionStatus(
            version=value,
            changes=tuple((change.__name__, _description(change)) for change in version.changes),
            deprecated_since=successor,
            sunset=sunset,
        )
        successor = date.fromisoformat(value)
    return statuses


def document_query_defaults(bundle: VersionBundle, schema: dict[str, Any], version: str | None) -> None:
    """An older version's OpenAPI document states the query defaults it still has: the routes
    declare the newest ones, and each later change that altered one (`QUERY_DEFAULTS`) gives
    the older value back, the newest change first so the oldest wins."""
    if version is None:
        return
    for newer in bundle.versions:
        if str(newer.value) <= version:
            break
        for change in newer.changes:
            for default in QUERY_DEFAULTS.get(change, ()):
                operation = schema.get("paths", {}).get(default.path, {}).get(default.method, {})
                for parameter in operation.get("parameters", ()):
                    if parameter.get("in") == "query" and parameter.get("name") == default.name:
                        parameter["schema"]["default"] = default.before
