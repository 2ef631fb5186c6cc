"""Frozen exchanges of each published REST version: request/response pairs recorded from Keel,
replayed against today's code by `test_frozen_exchanges.py`.

A client pinned to a version must keep seeing exactly what it saw, on every route, errors
included, whatever later versions change. The file `contracts/rest/<version>.exchanges.json`
holds, for each exchange, the request as sent and the answer as received, with the values that
differ from run to run (ids, times, ETags, cursors, secrets) replaced by placeholders numbered in
order of first appearance (`<profile:1>`, `<etag:2>`): equal values stay equal, so "the Location
names the id the body has" is part of what is frozen. Requests name earlier answers' values by
the same placeholders.

The same scenario is sent in every version, by keys pinned to it. A version's file is recorded
once, when the version is published; 2026-11-28's was recorded before 2026-12-07 existed.

Record (a new version's file; or exchanges added at the scenario's end; refused when an exchange
already frozen would change, so it cannot make a failing one pass):

    python -m tests.contract.frozen_exchanges record [VERSION]
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from testkit.oidc_issuer import LocalIssuer

from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.service.auth import issue_api_key
from keel.storage.migrations.runner import migrate
from tests.e2e.conftest import Deployment, deploy

VERSIONS = ("2026-11-28", "2026-12-07")  # every published version, oldest first
REPO = Path(__file__).resolve().parents[2]


def file_of(version: str) -> Path:
    return REPO / "contracts" / "rest" / f"{version}.exchanges.json"


# The answer headers a client may act on. Per-request ones (traceparent) and the envelope's echo
# of the request id (sent fixed per exchange, so it would only restate the request) are left out.
KEPT_HEADERS = (
    "content-type",
    "location",
    "etag",
    "cache-control",
    "keel-version",
    "retry-after",
    "www-authenticate",
    "allow",
    "idempotent-replayed",
    "deprecation",
    "sunset",
    "link",
)

KEYS: dict[str, list[Scope]] = {
    "writer": [Scope.PROFILES_READ, Scope.PROFILES_WRITE],
    "reader": [Scope.PROFILES_READ],
    "write_only": [Scope.PROFILES_WRITE],
    "admin": [Scope.ADMIN],
}

# Values that differ between runs, by kind: profile ids (a region and a ULID), webhook endpoint
# delivery and erasure ids (a prefix and 32 hex digits), event ids (UUIDs), times.
_ID = re.compile(r"\b(?:[a-z][a-z0-9]{1,5}_[0-9A-HJKMNP-TV-Z]{26}|(whep|whdl|era)_[0-9a-f]{32})\b")
_EVENT_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")  # a CloudEvent's
_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\b")
_ETAG = re.compile(r'(W/)?"(\d+)\.([^".]+)(\.full|\.own)?(\.\d{4}-\d{2}-\d{2})?"')
_PLACEHOLDER = re.compile(r"<([a-z_]+):(\d+)>")
_OPAQUE_FIELDS = {"next_cursor": "cursor", "secret": "secret", "token": "token"}
# A link to a next page carries its cursor (2026-12-07's `links.next`).
_CURSOR_IN_LINK = re.compile(r"[?&]cursor=([^&]+)")
# API-key ids (16 base32 letters), in the fields of the answers about keys.
_KEY_ID = re.compile(r"[a-z2-7]{16}")
_KEY_ID_FIELDS = {"id", "key_id", "actor"}
_INSIDE_TEXTS = tuple(f"<{kind}:" for kind in (*_OPAQUE_FIELDS.values(), "key"))


@dataclass
class Placeholders:
    """Run values <-> placeholders, numbered by kind in order of first appearance."""

    values: dict[str, str] = field(default_factory=dict)  # placeholder -> value of this run
    names: dict[str, str] = field(default_factory=dict)  # value of this run -> placeholder
    counts: dict[str, int] = field(default_factory=dict)

    def name(self, kind: str, value: str) -> str:
        known = self.names.get(value)
        if known is None:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            known = f"<{kind}:{self.counts[kind]}>"
            self.names[value] = known
            self.values[known] = value
        return known

    def fill(self, text: str) -> str:
        """A request's text with this run's values in place of placeholders."""

        def value(match: re.Match[str]) -> str:
            try:
                return self.values[match.group(0)]
            except KeyError:
                raise KeyError(f"{match.group(0)} names no value seen before it") from None

        return _PLACEHOLDER.sub(value, text)

    def hide(self, text: str) -> str:
        """An answer's text with this run's varying values as placeholders."""
        text = _ID.sub(lambda m: self.name(_ID_KINDS.get(m.group(1), "profile"), m.group(0)), text)
        text = _EVENT_ID.sub(lambda m: self.name("event", m.group(0)), text)
        # Values seen whole before, met again inside a text: a cursor in a Link header, a key id
        # in an idempotency scope.
        for value, placeholder in self.names.items():
            if placeholder.startswith(_INSIDE_TEXTS) and value in text:
                text = text.replace(value, placeholder)
        # Times are not numbered (two clock reads may or may not fall in the same microsecond),
        # but their zone designator is kept: `<time>Z` must not become `<time>+00:00`.
        return _TIME.sub(lambda m: "<time>" + m.group(2), text)


_ID_KINDS = {"whep": "webhook", "whdl": "delivery", "era": "erasure"}


def _hide_json(value: Any, names: Placeholders, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _hide_json(v, names, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_json(v, names) for v in value]
    if isinstance(value, str):
        if key == "next" and (cursor := _CURSOR_IN_LINK.search(value)) is not None:
            names.name("cursor", cursor.group(1))
        opaque = _OPAQUE_FIELDS.get(key or "")
        if opaque:
            return names.name(opaque, value)
        if key in _KEY_ID_FIELDS and _KEY_ID.fullmatch(value):
            return names.name("key", value)
        return names.hide(value)
    return value


@dataclass(frozen=True)
class Request:
    name: str
    method: str
    path: str
    key: str | None = None  # a name of KEYS, or None for no credentials
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: str | None = None  # a raw body, sent as is (with its Content-Type in headers)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "method": self.method, "path": self.path}
        if self.key is not None:
            record["key"] = self.key
        if self.headers:
            record["headers"] = self.headers
        if self.json is not None:
            record["json"] = self.json
        if self.content is not None:
            record["content"] = self.content
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Request:
        return cls(
            record["name"],
            record["method"],
            record["path"],
            record.get("key"),
            record.get("headers", {}),
            record.get("json"),
            record.get("content"),
        )


def _profile(handle: str, **fields: Any) -> dict[str, Any]:
    return {"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}], **fields}


ADA = _profile(
    "ada",
    display_name="Ada Lovelace",
    bio="Analyst",
    locale="en-GB",
    timezone="Europe/London",
    links=[{"kind": "website", "url": "https://example.com/ada"}],
    attributes={"team": "engines"},
)
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def scenario() -> Iterator[Request]:
    """Every route of the version, each with its answers and its refusals."""
    # Create: new, replayed, invalid, conflicting, malformed, without scope or key.
    yield Request("create", "POST", "/v1/profiles", "writer", {"Idempotency-Key": "frozen-1"}, ADA)
    yield Request("create replayed", "POST", "/v1/profiles", "writer", {"Idempotency-Key": "frozen-1"}, ADA)
    yield Request("create second", "POST", "/v1/profiles", "writer", json=_profile("grace"))
    yield Request("create invalid", "POST", "/v1/profiles", "writer", json={"handle": "x", "emails": []})
    yield Request("create taken handle", "POST", "/v1/profiles", "writer", json=_profile("ada"))
    yield Request(
        "create malformed json",
        "POST",
        "/v1/profiles",
        "writer",
        {"Content-Type": "application/json"},
        content='{"handle": ',
    )
    yield Request("create by a reader", "POST", "/v1/profiles", "reader", json=_profile("linus"))
    yield Request("create without a key", "POST", "/v1/profiles", json=_profile("linus"))
    # Read: the profile, as each caller sees it; conditional; missing; unknown version.
    for key in ("reader", "admin", "write_only", None):
        yield Request(f"read as {key}", "GET", "/v1/profiles/<profile:1>", key)
    yield Request(
        "read not modified", "GET", "/v1/profiles/<profile:1>", "reader", {"If-None-Match": '"1.<etag:1>"'}
    )
    yield Request("read missing", "GET", "/v1/profiles/eu1_00000000000000000000000000", "reader")
    yield Request(
        "read unknown version", "GET", "/v1/profiles/<profile:1>", "reader", {"Keel-Version": "1999-01-01"}
    )
    yield Request("read bad key", "GET", "/v1/profiles/<profile:1>", headers={"Authorization": "Bearer nope"})
    # List and search.
    yield Request("list", "GET", "/v1/profiles?limit=1", "reader")
    yield Request("list next page", "GET", "/v1/profiles?limit=1&cursor=<cursor:1>", "reader")
    yield Request("list by handle", "GET", "/v1/profiles?handle=grace", "reader")
    yield Request("list by email", "GET", "/v1/profiles?email=ADA@example.com", "reader")
    yield Request("list by ids", "GET", "/v1/profiles?ids=<profile:1>,<profile:2>", "reader")
    yield Request("list bad cursor", "GET", "/v1/profiles?cursor=forged", "reader")
    yield Request("list bad limit", "GET", "/v1/profiles?limit=1000", "reader")
    # Handles.
    yield Request("handle taken", "GET", "/v1/handles/ada", "reader")
    yield Request("handle free", "GET", "/v1/handles/someone_new", "reader")
    yield Request("handle invalid", "GET", "/v1/handles/x", "reader")
    # Update: a merge patch, a stale If-Match, a wrong media type, an invalid patch, a receipt.
    yield Request(
        "patch",
        "PATCH",
        "/v1/profiles/<profile:1>",
        "writer",
        {**MERGE_PATCH, "If-Match": '"1.<etag:1>"'},
        {"bio": "Mathematician", "attributes": {"team": None}},
    )
    yield Request(
        "patch stale",
        "PATCH",
        "/v1/profiles/<profile:1>",
        "writer",
        {**MERGE_PATCH, "If-Match": '"1.<etag:1>"'},
        {},
    )
    yield Request("patch as json", "PATCH", "/v1/profiles/<profile:1>", "writer", json={"bio": "x"})
    yield Request("patch invalid", "PATCH", "/v1/profiles/<profile:1>", "writer", MERGE_PATCH, {"handle": 7})
    yield Request(
        "patch write only", "PATCH", "/v1/profiles/<profile:2>", "write_only", MERGE_PATCH, {"bio": "b"}
    )
    yield Request(
        "patch missing", "PATCH", "/v1/profiles/eu1_00000000000000000000000000", "writer", MERGE_PATCH, {}
    )
    # Delete, then everything on the deleted profile.
    yield Request("delete", "DELETE", "/v1/profiles/<profile:2>", "writer")
    yield Request("delete again", "DELETE", "/v1/profiles/<profile:2>", "writer")
    yield Request("read deleted", "GET", "/v1/profiles/<profile:2>", "reader")
    yield Request("handle freed", "GET", "/v1/handles/grace", "reader")
    # Webhooks (admin).
    webhook = {"url": "http://127.0.0.1:9/hook", "event_types": ["keel.profile.updated.v1"]}
    yield Request("webhook create", "POST", "/v1/webhooks", "admin", json=webhook)
    yield Request("webhook create by a writer", "POST", "/v1/webhooks", "writer", json=webhook)
    yield Request("webhook create invalid", "POST", "/v1/webhooks", "admin", json={"url": 7})
    yield Request("webhook list", "GET", "/v1/webhooks", "admin")
    yield Request("webhook read", "GET", "/v1/webhooks/<webhook:1>", "admin")
    yield Request("webhook dead letters", "GET", "/v1/webhooks/<webhook:1>/dead-letters", "admin")
    yield Request("webhook replay", "POST", "/v1/webhooks/<webhook:1>/dead-letters/replay", "admin", json={})
    yield Request("webhook delete", "DELETE", "/v1/webhooks/<webhook:1>", "admin")
    yield Request("webhook read deleted", "GET", "/v1/webhooks/<webhook:1>", "admin")
    # Personal data (admin): an export, then the profile's erasure.
    yield Request("export", "GET", "/v1/profiles/<profile:1>/export", "admin")
    yield Request("export by a reader", "GET", "/v1/profiles/<profile:1>/export", "reader")
    yield Request("export missing", "GET", "/v1/profiles/eu1_00000000000000000000000000/export", "admin")
    yield Request("erasure by a writer", "POST", "/v1/profiles/<profile:1>/erasure", "writer")
    yield Request("erasure", "POST", "/v1/profiles/<profile:1>/erasure", "admin")
    yield Request("erasure status", "GET", "/v1/erasures/<erasure:1>", "admin")
    yield Request("erasure unknown", "GET", "/v1/erasures/era_00000000000000000000000000000000", "admin")
    # Unknown routes and methods.
    yield Request("unknown route", "GET", "/v1/nothing-here", "reader")
    yield Request("method not allowed", "PUT", "/v1/profiles/<profile:1>", "writer", json={})
    # API keys (admin), recorded 2026-12-07 when these routes were added to the version.
    # No time in a request: a fixed one would be in the past (refused) some day.
    billing = {"name": "billing", "scopes": ["profiles:read"]}
    yield Request("key create", "POST", "/v1/keys", "admin", json=billing)
    yield Request("key create by a writer", "POST", "/v1/keys", "writer", json=billing)
    yield Request(
        "key create with edge scope", "POST", "/v1/keys", "admin", json={"name": "e", "scopes": ["edge"]}
    )
    yield Request("key create invalid", "POST", "/v1/keys", "admin", json={"name": "", "scopes": []})
    yield Request("key list", "GET", "/v1/keys", "admin")
    yield Request("key read", "GET", "/v1/keys/<key:5>", "admin")
    yield Request(
        "key update",
        "PATCH",
        "/v1/keys/<key:5>",
        "admin",
        json={"name": "billing-v2", "scopes": ["profiles:read", "profiles:write"]},
    )
    yield Request(
        "key rotate", "POST", "/v1/keys/<key:5>/rotate", "admin", json={"previous_secret_valid_seconds": 3600}
    )
    yield Request("key expire", "POST", "/v1/keys/<key:5>/expire", "admin")
    yield Request("key revoke", "DELETE", "/v1/keys/<key:5>", "admin")
    yield Request("key read revoked", "GET", "/v1/keys/<key:5>", "admin")
    yield Request("key update revoked", "PATCH", "/v1/keys/<key:5>", "admin", json={"name": "again"})
    yield Request("key read missing", "GET", "/v1/keys/aaaaaaaaaaaaaaaa", "admin")
    yield Request("audit", "GET", "/v1/audit?limit=3", "admin")
    yield Request("audit of a key", "GET", "/v1/audit?key_id=<key:5>", "admin")
    yield Request("audit by a reader", "GET", "/v1/audit", "reader")
    # Recorded 2026-12-07, in 2026-11-28 by that version's code (before 2026-12-07 existed):
    # a page without `limit`, and a key asked for a version that does not exist.
    for number in range(21):
        yield Request(
            f"create filler {number}", "POST", "/v1/profiles", "writer", json=_profile(f"filler_{number:02d}")
        )
    yield Request("list without a limit", "GET", "/v1/profiles", "reader")
    yield Request(
        "key create with an unknown version",
        "POST",
        "/v1/keys",
        "admin",
        json={"name": "v", "scopes": ["profiles:read"], "api_version": "2020-01-01"},
    )
    # End users (OpenID Connect), recorded 2026-12-07 when these routes were added to every
    # version: an admin links a profile to a subject, whose access tokens then reach it at /v1/me.
    # End users name no version: their answers are made in the newest unless they ask.
    yield Request("end user profile", "POST", "/v1/profiles", "writer", json=_profile("mary"))
    mary = "/v1/profiles/<profile:25>"
    yield Request("end user link", "PUT", f"{mary}/end-user", "admin", json={"subject": "user-mary"})
    yield Request("end user link by a writer", "PUT", f"{mary}/end-user", "writer", json={"subject": "x"})
    yield Request("end user link invalid", "PUT", f"{mary}/end-user", "admin", json={"subject": ""})
    yield Request("end user link read", "GET", f"{mary}/end-user", "admin")
    pinned = {"Keel-Version": "<version>"}  # the version the scenario is recorded in
    yield Request("me", "GET", "/v1/me", "end_user", pinned)
    yield Request("me by a key", "GET", "/v1/me", "reader")
    yield Request("me with a forged token", "GET", "/v1/me", "forged_end_user", pinned)
    yield Request("me unlinked", "GET", "/v1/me", "stranger_end_user", pinned)
    yield Request("me patch", "PATCH", "/v1/me", "end_user", {**MERGE_PATCH, **pinned}, {"bio": "Programmer"})
    yield Request(
        "me patch refused", "PATCH", "/v1/me", "end_user", {**MERGE_PATCH, **pinned}, {"handle": "mary_2"}
    )
    yield Request("me patch invalid", "PATCH", "/v1/me", "end_user", {**MERGE_PATCH, **pinned}, {"bio": 7})
    yield Request("end user reads by id", "GET", mary, "end_user", pinned)
    yield Request("end user unlink", "DELETE", f"{mary}/end-user", "admin")
    yield Request("end user unlink again", "DELETE", f"{mary}/end-user", "admin")
    yield Request("me after unlink", "GET", "/v1/me", "end_user", pinned)


async def _keel(
    database: Path, mode: str, version: str, issuer: LocalIssuer
) -> tuple[Deployment, httpx.AsyncClient, dict[str, str], list[str]]:
    from keel.api.application import build_http_app

    url = f"sqlite:///{database}"
    await asyncio.to_thread(migrate, url)
    settings = Settings(
        database_url=url,
        ratelimit_enabled=False,
        webhook_allow_private_targets=True,
        oidc_issuer=issuer.issuer,
        oidc_audience=issuer.audience,
        oidc_jwks_url=issuer.jwks_url,
    )
    deployment = await deploy(settings, mode)
    app = build_http_app(deployment.serving.settings, deployment.serving.metrics)
    app.state.services = deployment.serving
    core = deployment.core.local
    tokens = {}
    key_ids = []
    for name, scopes in KEYS.items():
        issued = await issue_api_key(core.store, core.clock, scopes=scopes, api_version=version, name=name)
        tokens[name] = issued.token
        key_ids.append(issued.key.id)
    tokens["end_user"] = issuer.token("user-mary")
    tokens["stranger_end_user"] = issuer.token("user-nobody")
    tokens["forged_end_user"] = issuer.hmac_with_public_key("user-mary")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://keel.test")
    return deployment, client, tokens, key_ids


async def exchange_all(
    requests: list[Request], version: str, mode: str = "monolith", numbers: list[int] | None = None
) -> list[dict[str, Any]]:
    """Send the requests in order, with keys pinned to `version`, to a fresh Keel (SQLite, no
    rate limits; a monolith, or an edge in front of a core over gRPC); the exchanges, with
    run-specific values as placeholders.
    `numbers`: each request's position in the whole scenario (its request id), when only some
    are sent."""
    names = Placeholders()
    exchanges = []
    issuer = LocalIssuer()
    with tempfile.TemporaryDirectory() as directory:
        deployment, client, tokens, key_ids = await _keel(
            Path(directory) / "keel.sqlite3", mode, version, issuer
        )
        for key_id in key_ids:
            names.name("key", key_id)
        try:
            for number, request in zip(numbers or range(1, len(requests) + 1), requests, strict=True):
                # Profile ids are ULIDs, ordered by their millisecond only: two creates in the same
                # millisecond could list in either order. A pause keeps every request in its own.
                await asyncio.sleep(0.002)
                headers = {k: names.fill(v).replace("<version>", version) for k, v in request.headers.items()}
                headers["X-Request-Id"] = f"{number:032x}"
                if request.key is not None:
                    headers["Authorization"] = f"Bearer {tokens[request.key]}"
                body = json.loads(names.fill(json.dumps(request.json))) if request.json is not None else None
                content = names.fill(request.content) if request.content is not None else None
                response = await client.request(
                    request.method, names.fill(request.path), headers=headers, json=body, content=content
                )
                exchanges.append({"request": request.as_record(), "response": _answer(response, names)})
        finally:
            await client.aclose()
            await deployment.close()
            issuer.close()
    return exchanges


def _answer(response: httpx.Response, names: Placeholders) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if response.content:  # first: the headers may repeat the body's opaque values (a cursor)
        try:
            body["json"] = _hide_json(response.json(), names)
        except ValueError:
            body["text"] = names.hide(response.text)
    headers = {}
    for name in KEPT_HEADERS:
        value = response.headers.get(name)
        if value is not None:
            headers[name] = _etag(value, names) if name == "etag" else names.hide(value)
    return {"status": response.status_code, "headers": headers, **body}


def template_of(path: str) -> str:
    """`/v1/profiles/<profile:1>?limit=1` -> `/v1/profiles/{profile_id}` (as the routes write it)."""
    parameters = {
        "profiles": "{profile_id}",
        "webhooks": "{webhook_id}",
        "handles": "{handle}",
        "erasures": "{erasure_id}",
        "keys": "{key_id}",
    }
    parts = path.split("?")[0].split("/")
    return "/".join(parameters.get(parts[i - 1], part) if i else part for i, part in enumerate(parts))


def _etag(value: str, names: Placeholders) -> str:
    """An ETag with only the hash of the profile id as a placeholder: its strength, version,
    view and API version suffixes (`"2.<etag:1>.full.2026-12-07"`) are part of what is frozen."""
    match = _ETAG.fullmatch(value)
    if match is None:
        return names.hide(value)
    weak, version, tag, view, shape = match.groups()
    return f'{weak or ""}"{version}.{names.name("etag", tag)}{view or ""}{shape or ""}"'


# A deprecated version's notices on an answer (RFC 9745, RFC 8594): `Deprecation`, `Sunset` and
# their `Link`s. The replay adds them to what was recorded (`as_today`), so they are recorded
# without them: an exchange added to a version after its deprecation is stored as the ones
# recorded before it.
_NOTICE_LINK = re.compile(r'rel="(deprecation|sunset)"')


def without_notices(answer: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in answer["headers"].items() if k not in ("deprecation", "sunset")}
    if "link" in headers:
        kept = [part for part in headers["link"].split(", ") if not _NOTICE_LINK.search(part)]
        if kept:
            headers["link"] = ", ".join(kept)
        else:
            del headers["link"]
    return {**answer, "headers": headers}


def load(version: str) -> list[dict[str, Any]]:
    exchanges: list[dict[str, Any]] = json.loads(file_of(version).read_text())["exchanges"]
    return exchanges


def record(version: str) -> None:
    """Record the scenario in a version; refused unless every exchange already in its file is
    answered as the replay expects it (`as_today`: the scenario only ever grows at its end). The
    exchanges already frozen are kept as they were recorded; the new ones are added after them."""
    from tests.contract.test_frozen_exchanges import as_today

    exchanges = [
        {**exchange, "response": without_notices(exchange["response"])}
        for exchange in asyncio.run(exchange_all(list(scenario()), version))
    ]
    file = file_of(version)
    if file.exists():
        kept = load(version)
        changed = [
            old["request"]["name"]
            for old, new in zip(kept, exchanges, strict=False)
            if old["request"] != new["request"]
            or without_notices(as_today(old["response"], old["request"], version)) != new["response"]
        ]
        if changed or len(exchanges) < len(kept):
            sys.exit(f"not recorded: exchanges already frozen would change: {changed or 'some were removed'}")
        exchanges = kept + exchanges[len(kept) :]
    file.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "version": version,
        "about": "Frozen exchanges of this API version; see tests/contract/frozen_exchanges.py.",
        "exchanges": exchanges,
    }
    file.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(exchanges)} exchanges in {file.relative_to(REPO)}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["record"] or not set(sys.argv[2:]) <= set(VERSIONS):
        sys.exit(__doc__)
    for chosen in sys.argv[2:] or VERSIONS:
        record(chosen)
