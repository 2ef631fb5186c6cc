"""A client pinned to 2026-11-28 sees exactly what it saw when that version was recorded: the
recorded requests, replayed against today's code, get the recorded answers (status, the headers
a client acts on, and the body, with run-specific values as placeholders)."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.routing import APIRoute

from keel.api.rest import versioned
from tests.contract.frozen_exchanges import (
    FILE,
    Placeholders,
    Request,
    _etag,
    exchange_all,
    load,
    template_of,
)

# Served by a core only (docs/not-done-yet.md): an edge refuses them, so its replay leaves them out.
_CORE_ONLY = re.compile(r"^/v1/(webhooks|erasures|keys|audit)\b|^/v1/profiles/[^/]+/(export|erasure)$")


@pytest.mark.parametrize("mode", ["monolith", "edge"])
async def test_the_recorded_version_answers_as_it_did_when_recorded(mode: str) -> None:
    """Recorded from a monolith; an edge in front of a core must answer the same (but for the
    routes only a core serves)."""
    numbered = [
        (number, exchange)
        for number, exchange in enumerate(load(), start=1)
        if mode == "monolith" or not _CORE_ONLY.search(exchange["request"]["path"])
    ]
    recorded = [exchange for _, exchange in numbered]
    requests = [Request.from_record(exchange["request"]) for exchange in recorded]
    replayed = await exchange_all(requests, mode, [number for number, _ in numbered])
    differences = [
        f"{want['request']['name']}:\n  recorded {json.dumps(want['response'])}"
        f"\n  now      {json.dumps(got['response'])}"
        for want, got in zip(recorded, replayed, strict=True)
        if want != got
    ]
    assert not differences, "\n".join(differences)


def test_every_route_of_the_version_has_a_recorded_exchange() -> None:
    recorded = {(e["request"]["method"], template_of(e["request"]["path"])) for e in load()}
    routes = {
        (method, route.path)
        for route in versioned.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert routes - recorded == set(), f"routes of {FILE.name} with no exchange"


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
    assert names.fill('"1.<etag:2>"') == '"1.zz"'
