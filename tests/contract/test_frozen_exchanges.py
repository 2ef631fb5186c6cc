"""A client pinned to a version sees exactly what it saw when that version was recorded: the
recorded requests, replayed against today's code, get the recorded answers (status, the headers
a client acts on, and the body, with run-specific values as placeholders). 2026-11-28's answers
were recorded by 2026-11-28's code, before 2026-12-07 existed.

What a later version may add to an older version's answers, and nothing else (`as_today`; the
values are written out here, not computed by the code under test):
- `Deprecation` and its `Link` (RFC 9745), on every answer made in a deprecated version, its
  `Link` joined to the answer's own;
- an answer made in no version (no key, or one that is not valid, and no `Keel-Version`) names
  the newest version, which it is made in;
- the refusals that list the versions there are (an unknown `Keel-Version`, a key's unknown
  `api_version`) list today's.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from fastapi.routing import APIRoute

from keel.api.rest import versioned
from keel.api.rest.api_versions import NEWEST_VERSION, SUPPORTED_VERSIONS
from tests.contract.frozen_exchanges import (
    VERSIONS,
    Placeholders,
    Request,
    _etag,
    exchange_all,
    file_of,
    load,
    template_of,
)

# Served by a core only (docs/not-done-yet.md): an edge refuses them, so its replay leaves them out.
_CORE_ONLY = re.compile(
    r"^/v1/(webhooks|erasures|keys|audit|me)\b|^/v1/profiles/[^/]+/(export|erasure|end-user)$"
)
# End users' access tokens are checked by a core only (an edge takes them for unknown keys).
_END_USERS = {"end_user", "stranger_end_user", "forged_end_user"}
_LIST_OF_VERSIONS = re.compile(r"(Keel-Version must be one of: ).*")
_KEY_VERSIONS = re.compile(r"^must be one of [0-9, -]+$")
# What an answer made in each deprecated version carries (2026-12-07 deprecated 2026-11-28).
_NOTICES = {
    "2026-11-28": {
        "deprecation": "@1796601600",  # 2026-12-07T00:00:00Z
        "link": '</v1/versions>; rel="deprecation"; type="application/json"',
    },
}


def as_today(recorded: dict[str, Any], request: dict[str, Any], version: str) -> dict[str, Any]:
    """The answer a recorded one is today: with what later versions add (see the module's
    docstring), the rest unchanged."""
    answer = copy.deepcopy(recorded)
    headers = answer["headers"]
    if headers.get("keel-version") == version and "key" not in request:
        headers["keel-version"] = NEWEST_VERSION
    body = answer.get("json")
    if isinstance(body, dict) and body.get("type") == "urn:keel:problem:unknown-api-version":
        body["detail"] = _LIST_OF_VERSIONS.sub(
            lambda m: m.group(1) + ", ".join(sorted(SUPPORTED_VERSIONS)) + ".", body["detail"]
        )
    for error in body.get("errors") or () if isinstance(body, dict) else ():
        if error["field"] == "/api_version" and _KEY_VERSIONS.match(error["message"]):
            error["message"] = "must be one of " + ", ".join(sorted(SUPPORTED_VERSIONS))
    # The version the answer is made in: the one it names, else the one asked for, else the key's.
    answered_in = headers.get("keel-version") or request.get("headers", {}).get("Keel-Version")
    if answered_in is None and "key" in request:
        answered_in = version
    for name, value in _NOTICES.get(answered_in or "", {}).items():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return answer


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode", ["monolith", "edge"])
async def test_each_recorded_version_answers_as_it_did_when_recorded(version: str, mode: str) -> None:
    """Recorded from a monolith; an edge in front of a core must answer the same (but for the
    routes only a core serves)."""
    numbered = [
        (number, exchange)
        for number, exchange in enumerate(load(version), start=1)
        if mode == "monolith"
        or not (
            _CORE_ONLY.search(exchange["request"]["path"]) or exchange["request"].get("key") in _END_USERS
        )
    ]
    recorded = [exchange for _, exchange in numbered]
    requests = [Request.from_record(exchange["request"]) for exchange in recorded]
    replayed = await exchange_all(requests, version, mode, [number for number, _ in numbered])
    differences = []
    for want, got in zip(recorded, replayed, strict=True):
        expected = as_today(want["response"], want["request"], version)
        if expected != got["response"]:
            differences.append(
                f"{want['request']['name']}:\n  expected {json.dumps(expected)}\n  now      "
                + json.dumps(got["response"])
            )
    assert not differences, "\n".join(differences)


def test_every_version_is_recorded_and_every_route_has_an_exchange() -> None:
    assert set(VERSIONS) == SUPPORTED_VERSIONS
    routes = {
        (method, route.path)
        for route in versioned.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    for version in VERSIONS:
        recorded = {(e["request"]["method"], template_of(e["request"]["path"])) for e in load(version)}
        assert routes - recorded == set(), f"routes of {file_of(version).name} with no exchange"


@pytest.mark.parametrize(
    ("value", "hidden"),
    [
        ("/v1/profiles/eu1_01KBZ8Q2Z3Y4X5W6V7T6S5R4Q3", "/v1/profiles/<profile:1>"),
        ("2026-12-06T18:00:00.123456Z", "<time>Z"),
        ("2026-12-06T18:00:00+00:00", "<time>+00:00"),
        ("eu1_01KBZ8Q2Z3Y4X5W6V7T6S5R4Q3 eu1_01KBZ8Q2Z3Y4X5W6V7T6S5R4Q4", "<profile:1> <profile:2>"),
        (
            "eu1_01KBZ8Q2Z3Y4X5W6V7T6S5R4Q3 and again eu1_01KBZ8Q2Z3Y4X5W6V7T6S5R4Q3",
            "<profile:1> and again <profile:1>",
        ),
    ],
)
def test_run_values_become_placeholders_and_equal_values_stay_equal(value: str, hidden: str) -> None:
    assert Placeholders().hide(value) == hidden


def test_an_etag_keeps_its_strength_version_and_view() -> None:
    names = Placeholders()
    assert _etag('"2.k7d3.full"', names) == '"2.<etag:1>.full"'
    assert _etag('"3.k7d3"', names) == '"3.<etag:1>"'
    assert _etag('W/"3.zz"', names) == 'W/"3.<etag:2>"'
    assert _etag('"4.k7d3.full.2026-12-07"', names) == '"4.<etag:1>.full.2026-12-07"'
    assert _etag('"4.k7d3.2026-12-07"', names) == '"4.<etag:1>.2026-12-07"'
    assert names.fill('"1.<etag:2>"') == '"1.zz"'
