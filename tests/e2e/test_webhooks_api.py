"""The webhook admin API over REST, in process, on SQLite and PostgreSQL: admin keys only (any
other key gets a 403 problem and learns nothing), bad input is a 422 problem and never a 500,
and a delivery made from a REST write verifies with the secret the registration showed once."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from keel.config import Settings
from keel.domain.webhooks import RetrySchedule
from keel.service.webhook_dispatcher import DispatchPolicy, WebhookDispatcher
from keel.webhooks.http_sender import HttpWebhookSender
from keel.webhooks.resolver import SystemResolver
from keel.webhooks.secret_box import AesGcmSecretBox, box_key
from tests.e2e.conftest import Api, make_api
from tests.e2e.test_rest_profiles import assert_problem
from tests.fakes import FakeClock
from tests.integration.conftest import truncate
from tests.integration.webhook_receivers import receiver

PROBLEM = "application/problem+json"


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    # Loopback receivers: the tests' endpoints are on 127.0.0.1.
    settings = Settings(database_url=database_url, webhook_allow_private_targets=True)
    built, deployment = await make_api(settings)
    async with built.client:
        yield built
    await deployment.close()


def profile(n: int) -> dict[str, Any]:
    return {"handle": f"user_{n}", "emails": [{"address": f"user{n}@example.com", "primary": True}]}


async def register(api: Api, url: str, **fields: Any) -> dict[str, Any]:
    created = await api.client.post("/v1/webhooks", json={"url": url, **fields}, headers=api.admin)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_an_admin_registers_lists_reads_and_deletes_an_endpoint(api: Api) -> None:
    created = await api.client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["keel.profile.updated.v1"]},
        headers=api.admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/v1/webhooks/{body['id']}"
    assert created.headers["cache-control"] == "no-store"
    assert body["secret"].startswith("whsec_")
    assert body["event_types"] == ["keel.profile.updated.v1"]
    assert body["holds_personal_data"] is False
    shown = {k: v for k, v in body.items() if k != "secret"}

    listed = await api.client.get("/v1/webhooks", headers=api.admin)
    assert listed.json() == {"items": [shown]}  # the secret is never shown again
    read = await api.client.get(f"/v1/webhooks/{body['id']}", headers=api.admin)
    assert read.json() == shown
    assert body["secret"] not in read.text + listed.text

    deleted = await api.client.delete(f"/v1/webhooks/{body['id']}", headers=api.admin)
    assert deleted.status_code == 204
    gone = await api.client.get(f"/v1/webhooks/{body['id']}", headers=api.admin)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == PROBLEM


async def test_any_other_key_gets_a_403_problem_and_learns_nothing(api: Api) -> None:
    existing = await register(api, "http://127.0.0.1:9/hook")
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/hook"}),
        ("POST", "/v1/webhooks", {"url": 7, "unknown": True}),  # invalid too: still 403, not 422
        ("GET", "/v1/webhooks", None),
        ("GET", f"/v1/webhooks/{existing['id']}", None),
        ("GET", "/v1/webhooks/whep_missing", None),
        ("DELETE", f"/v1/webhooks/{existing['id']}", None),
        ("GET", f"/v1/webhooks/{existing['id']}/dead-letters", None),
        ("POST", f"/v1/webhooks/{existing['id']}/dead-letters/replay", {}),
        ("POST", "/v1/webhooks/whep_missing/dead-letters/replay", {}),
    ]
    answers: list[dict[str, Any]] = []
    for who in (api.writer, api.reader):
        for method, path, body in calls:
            response = await api.client.request(method, path, json=body, headers=who)
            assert response.status_code == 403, (method, path, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert "127.0.0.1" not in response.text
            # Beside the path it was asked (echoed as `instance`) and its request id, the
            # answer is the same for all: an existing endpoint and a missing one look alike.
            problem = response.json()
            answers.append({k: v for k, v in problem.items() if k not in ("instance", "request_id")})
    assert answers == [answers[0]] * len(answers)
    assert answers[0]["detail"] == "Only admin keys may manage webhooks."
    anonymous = await api.client.get("/v1/webhooks")
    assert anonymous.status_code == 401
    assert (await api.client.get(f"/v1/webhooks/{existing['id']}", headers=api.admin)).status_code == 200


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/url"),
        ({"url": "ftp://example.com/x"}, "/url"),
        ({"url": "http://user:pw@example.com/x"}, "/url"),
        ({"url": "x" * 3000}, "/url"),
        ({"url": "HTTPS://" + "0" * 300}, "/url"),  # found by schemathesis: was a 500
        ({"url": 5}, "/url"),
        ({"url": "http://\u2603.net/hook"}, "/url"),  # IDNA 2003 only: the HTTP client refuses it
        ({"url": "http://xn--n3h.net/hook"}, "/url"),
        ({"url": "http://127.0.0.1:9/x", "event_types": ["keel.no.such.v1"]}, "/event_types/0"),
        ({"url": "http://127.0.0.1:9/x", "event_types": "keel.profile.created.v1"}, "/event_types"),
        (
            {"url": "http://127.0.0.1:9/x", "event_types": ["keel.profile.created.v1"] * 2},
            "/event_types",
        ),
        ({"url": "http://127.0.0.1:9/x", "holds_personal_data": "maybe"}, "/holds_personal_data"),
        ({"url": "http://127.0.0.1:9/x", "secret": "mine"}, "/secret"),
    ],
)
async def test_bad_input_is_a_422_problem_naming_the_field(api: Api, body: Any, pointer: str) -> None:
    response = await api.client.post("/v1/webhooks", json=body, headers=api.admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert pointer in [error["field"] for error in response.json()["errors"]], response.text
    assert (await api.client.get("/v1/webhooks", headers=api.admin)).json() == {"items": []}


async def test_other_bad_requests_are_problems_never_500(api: Api) -> None:
    existing = await register(api, "http://127.0.0.1:9/hook")
    json_body = {"content-type": "application/json"}
    cases: list[tuple[str, str, bytes | None, Any]] = [
        ("POST", "/v1/webhooks", b"{not json", None),
        ("POST", "/v1/webhooks", b"[]", None),
        ("GET", f"/v1/webhooks/{existing['id']}/dead-letters?limit=0", None, None),
        ("GET", f"/v1/webhooks/{existing['id']}/dead-letters?limit=many", None, None),
        ("POST", f"/v1/webhooks/{existing['id']}/dead-letters/replay", None, {"ids": "all"}),
        ("POST", f"/v1/webhooks/{existing['id']}/dead-letters/replay", None, {"ids": [""]}),
        ("GET", "/v1/webhooks/whep_missing/dead-letters", None, None),
        ("POST", "/v1/webhooks/whep_missing/dead-letters/replay", None, {}),
        ("DELETE", "/v1/webhooks/whep_missing", None, None),
    ]
    for method, path, content, body in cases:
        headers = {**api.admin, **(json_body if content is not None else {})}
        response = await api.client.request(method, path, headers=headers, content=content, json=body)
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text)
        assert response.headers["content-type"] == PROBLEM, (method, path)


async def test_a_url_on_a_private_address_is_refused_without_the_operators_setting(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    built, deployment = await make_api(Settings(database_url=database_url))
    try:
        async with built.client:
            for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook"):
                refused = await built.client.post("/v1/webhooks", json={"url": url}, headers=built.admin)
                assert refused.status_code == 422, refused.text
                assert [e["field"] for e in refused.json()["errors"]] == ["/url"]
            assert (await built.client.get("/v1/webhooks", headers=built.admin)).json() == {"items": []}
    finally:
        await deployment.close()


async def test_a_rest_write_is_delivered_signed_with_the_secret_shown_at_registration(api: Api) -> None:
    async with receiver(200) as endpoint:
        registered = await register(api, endpoint.url, event_types=["keel.profile.created.v1"])
        created = await api.client.post("/v1/profiles", json=profile(1), headers=api.writer)
        assert created.status_code == 201
        dispatcher = api.keel.local.dispatcher
        assert dispatcher is not None  # every core has one
        await dispatcher.run_once()
        await dispatcher.settle()
        [request] = await endpoint.wait_for(1)
    event = Webhook(registered["secret"]).verify(request.body, request.headers)
    assert event["subject"] == created.json()["id"]
    registry = api.keel.metrics.registry
    assert registry.get_sample_value("keel_webhook_deliveries_total", {"outcome": "delivered"}) == 1
    assert registry.get_sample_value("keel_webhook_attempt_duration_seconds_count") == 1


async def test_dead_letters_are_listed_and_replayed_over_rest(api: Api) -> None:
    # Virtual time from now on: the replay (by the API, on the system clock) is due at once.
    clock = FakeClock(datetime.now(UTC))
    settings = api.keel.settings
    # A dispatcher on the same database with a virtual clock, so the schedule runs out at once.
    dispatcher = WebhookDispatcher(
        api.keel.local.store,
        HttpWebhookSender(SystemResolver(), allow_private=True),
        AesGcmSecretBox(box_key(settings.webhook_secrets_secret())),
        SystemResolver(),
        clock,
        DispatchPolicy(schedule=RetrySchedule((timedelta(minutes=1),)), allow_private_targets=True),
        rng=random.Random(1),
    )

    async def one_pass() -> None:
        await dispatcher.run_once()
        await dispatcher.settle()

    try:
        async with receiver(500) as endpoint:
            registered = await register(api, endpoint.url)
            dead_letters = f"/v1/webhooks/{registered['id']}/dead-letters"
            assert (
                await api.client.post("/v1/profiles", json=profile(1), headers=api.writer)
            ).status_code == 201
            await one_pass()
            assert (await api.client.get(dead_letters, headers=api.admin)).json() == {"items": []}
            clock.advance(timedelta(minutes=2))
            await one_pass()
            listed = (await api.client.get(dead_letters, headers=api.admin)).json()["items"]
            assert len(listed) == 1
            [letter] = listed
            assert (letter["attempts"], letter["last_status"], letter["last_error"]) == (2, 500, "status")
            assert letter["event_type"] == "keel.profile.created.v1"

            endpoint.status = 200
            replay = await api.client.post(
                f"{dead_letters}/replay", json={"ids": [letter["id"]]}, headers=api.admin
            )
            assert replay.json() == {"replayed": 1}
            await one_pass()
            assert (await api.client.get(dead_letters, headers=api.admin)).json() == {"items": []}
            assert len(endpoint.received) == 3
            again = await api.client.post(f"{dead_letters}/replay", headers=api.admin)
            assert again.json() == {"replayed": 0}
    finally:
        await dispatcher.stop()
        await dispatcher.sender.close()


async def test_an_edge_does_not_serve_webhook_administration(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    built, deployment = await make_api(Settings(database_url=database_url), "edge")
    try:
        async with built.client:
            response = await built.client.get("/v1/webhooks", headers=built.admin)
            assert response.status_code == 404
            assert response.headers["content-type"] == PROBLEM
    finally:
        await deployment.close()


async def test_a_malformed_endpoint_id_is_not_found_and_a_malformed_dead_letter_id_a_422(api: Api) -> None:
    """Ids the database cannot even hold (a NUL byte: PostgreSQL refuses it in text) or of
    another shape: no endpoint has them (404); a replay naming such a dead letter is bad input
    (422, whichever endpoint it is sent to: the body is checked first)."""
    existing = await register(api, "http://127.0.0.1:9/hook")
    for webhook_id in ("%00", "whep_%00", "whep_missing", "whep_" + "0" * 32):
        for method, path, body in (
            ("GET", f"/v1/webhooks/{webhook_id}", None),
            ("DELETE", f"/v1/webhooks/{webhook_id}", None),
            ("GET", f"/v1/webhooks/{webhook_id}/dead-letters", None),
            ("POST", f"/v1/webhooks/{webhook_id}/dead-letters/replay", {}),
        ):
            response = await api.client.request(method, path, headers=api.admin, json=body)
            assert_problem(response, 404, "not-found")
    for webhook_id in (existing["id"], "%00", "whep_" + "0" * 32):
        for ids, pointer in ((["\x00"], "/ids/0"), (["whdl_" + "0" * 32, "whdl_\x00"], "/ids/1")):
            response = await api.client.post(
                f"/v1/webhooks/{webhook_id}/dead-letters/replay", headers=api.admin, json={"ids": ids}
            )
            problem = assert_problem(response, 422, "validation")
            assert [error["field"] for error in problem["errors"]] == [pointer], response.text
    well_formed = await api.client.post(
        f"/v1/webhooks/{existing['id']}/dead-letters/replay",
        headers=api.admin,
        json={"ids": ["whdl_" + "0" * 32]},
    )
    assert (well_formed.status_code, well_formed.json()) == (200, {"replayed": 0})
    assert (await api.client.get(f"/v1/webhooks/{existing['id']}", headers=api.admin)).status_code == 200
