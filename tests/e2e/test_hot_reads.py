"""Profile reads, of every version, skip the framework's routing (`keel.api.rest.hot_reads`).
The promise: for the same request, the same answer (status, headers, body, metric labels) as
the framework's route gives, whoever asks and whatever the profile's state."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from keel.api.application import build_http_app
from keel.api.http.request_state import request_scope
from keel.api.rest.api_versions import NEWEST_VERSION, versions
from keel.api.rest.hot_reads import HotProfileReads, profile_id_of
from keel.config import Settings
from keel.domain.api_keys import Scope as KeyScope
from keel.service.auth import issue_api_key
from tests.e2e.conftest import MODES, Deployment, bearer, deploy
from tests.integration.conftest import truncate

OLDEST_VERSION = str(versions.version_values[-1])
# What each caller of the fixture gets for a live profile: a read, a refusal for lack of scope,
# no or a bad key.
_STATUSES = {
    "anonymous": 401,
    "unknown key": 401,
    "writer": 200,
    "reader": 200,
    "write only": 403,
    "admin": 200,
}
# A header that differs between any two requests, by design (a new span each time); the request
# id, which problems repeat in their body, is the client's own.
_PER_REQUEST = {"traceparent"}
_REQUEST_ID = {"X-Request-Id": "0123456789abcdef0123456789abcdef"}


@dataclass
class TwoApps:
    hot: httpx.AsyncClient
    framework: httpx.AsyncClient
    deployment: Deployment
    headers: dict[str, dict[str, str]]


@pytest.fixture(params=MODES)
async def apps(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[TwoApps]:
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    # No rate limits: both apps share the deployment's limiter, and only their routing differs.
    deployment = await deploy(Settings(database_url=database_url, ratelimit_enabled=False), request.param)
    clients = []
    for hot_reads in (True, False):
        app = build_http_app(deployment.serving.settings, deployment.serving.metrics, hot_reads=hot_reads)
        app.state.services = deployment.serving
        transport = httpx.ASGITransport(app=app)
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://keel.test"))
    core = deployment.core.local
    headers = {"anonymous": {}, "unknown key": bearer("keel_" + "x" * 40)}
    for name, scopes in {
        "writer": [KeyScope.PROFILES_READ, KeyScope.PROFILES_WRITE],
        "reader": [KeyScope.PROFILES_READ],
        "write only": [KeyScope.PROFILES_WRITE],
        "admin": [KeyScope.ADMIN],
    }.items():
        issued = await issue_api_key(
            core.store, core.clock, scopes=scopes, api_version=NEWEST_VERSION, name=name
        )
        headers[name] = bearer(issued.token)
    try:
        yield TwoApps(clients[0], clients[1], deployment, headers)
    finally:
        for client in clients:
            await client.aclose()
        await deployment.close()


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in _PER_REQUEST]
    return response.status_code, headers, response.content


async def _create(apps: TwoApps, handle: str) -> str:
    """A new profile's path."""
    body = {"handle": handle, "emails": [{"address": f"{handle}@example.com", "primary": True}]}
    created = await apps.hot.post("/v1/profiles", json=body, headers=apps.headers["writer"])
    assert created.status_code == 201, created.text
    return created.headers["Location"]


async def _same_answer(apps: TwoApps, path: str, headers: dict[str, str]) -> httpx.Response:
    """Asked of the hot path, then of the framework, then of the hot path again: the framework's
    answer must match the hot path's before and after it."""
    hot = await apps.hot.get(path, headers={**headers, **_REQUEST_ID})
    framework = await apps.framework.get(path, headers={**headers, **_REQUEST_ID})
    hot_again = await apps.hot.get(path, headers={**headers, **_REQUEST_ID})
    assert _answer(hot) == _answer(framework) == _answer(hot_again), (path, headers)
    return hot


def _layers(client: httpx.AsyncClient) -> list[str]:
    """The ASGI layers of a client's app, outermost first, as Starlette built them."""
    layer: Any = client._transport.app.middleware_stack  # type: ignore[attr-defined]
    names: list[str] = []
    while layer is not None and len(names) < 50:
        names.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    return names


async def test_the_hot_app_answers_hot_reads_itself_right_after_the_version_picker(apps: TwoApps) -> None:
    """What the comparisons above rely on: one app has the hot path in its stack, in its place,
    and the other has not (so they compare the hot path with the framework, not the framework
    with itself)."""
    for client in (apps.hot, apps.framework):
        await client.get("/healthz")  # Starlette builds the stack at the first request
    hot, framework = _layers(apps.hot), _layers(apps.framework)
    assert hot[hot.index("RestAdmission") :].index("HotProfileReads") > 0
    assert hot[hot.index("HotProfileReads") - 1] == "_PickerThenHotReads"
    assert "HotProfileReads" not in framework
    assert "KeelVersionPicker" in framework


async def test_through_the_whole_app_a_hot_read_never_reaches_the_framework(apps: TwoApps) -> None:
    """The version picker must tell the hot path the version (else every comparison above would
    compare the framework with itself): a hot read sent through the whole app is answered
    before the framework's routing, any other request reaches it."""
    await apps.hot.get("/healthz")  # Starlette builds the stack at the first request
    layer: Any = apps.hot._transport.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, HotProfileReads):
        layer = layer.app
    framework = layer.app
    reached: list[str] = []

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(f"{scope['method']} {scope['path']}")
        await framework(scope, receive, send)

    layer.app = spy
    try:
        reader = apps.headers["reader"]
        missing = await apps.hot.get("/v1/profiles/eu1_00000000000000000000000000", headers=reader)
        older = await apps.hot.get(
            "/v1/profiles/eu1_00000000000000000000000000", headers={**reader, "Keel-Version": OLDEST_VERSION}
        )
        listed = await apps.hot.get("/v1/profiles", headers=reader)
    finally:
        layer.app = framework
    assert (missing.status_code, older.status_code, listed.status_code) == (404, 404, 200)
    assert older.headers["keel-version"] == OLDEST_VERSION
    assert reached == ["GET /v1/profiles"]


async def test_every_caller_gets_the_framework_routes_answer(apps: TwoApps) -> None:
    path = await _create(apps, "hot_reader")
    gone = await _create(apps, "gone_soon")
    assert (await apps.hot.delete(gone, headers=apps.headers["writer"])).status_code == 204

    statuses = {}
    for caller, headers in apps.headers.items():
        statuses[caller] = (await _same_answer(apps, path, headers)).status_code
        for other in (gone, "/v1/profiles/p_0000000000000000000000", "/v1/profiles/%20x"):
            await _same_answer(apps, other, headers)
    assert statuses == _STATUSES  # the cases meant

    reader = apps.headers["reader"]
    tag = (await apps.hot.get(path, headers=reader)).headers["ETag"]
    not_modified = await _same_answer(apps, path, {**reader, "If-None-Match": tag})
    assert not_modified.status_code == 304
    assert (await _same_answer(apps, path, {**reader, "If-None-Match": '"other"'})).status_code == 200
    assert (await _same_answer(apps, path, {**reader, "Keel-Version": NEWEST_VERSION})).status_code == 200
    assert (await _same_answer(apps, path, {**reader, "Keel-Version": "1999-01-01"})).status_code == 400
    # Not a hot read: both leave it to the framework, which redirects to the path without "/".
    assert (await _same_answer(apps, path + "/", reader)).status_code == 307


async def test_an_older_versions_reads_get_the_framework_routes_answer(apps: TwoApps) -> None:
    """The hot path answers an older version's reads too, turning the document back into that
    version's shape as Cadwyn's migrations do: byte for byte the framework's answer."""
    path = await _create(apps, "older_reader")
    older = {"Keel-Version": OLDEST_VERSION}
    statuses = {}
    for caller, headers in apps.headers.items():
        answer = await _same_answer(apps, path, {**headers, **older})
        statuses[caller] = answer.status_code
        if answer.status_code == 200:
            assert "primary_email" not in answer.json()
            assert answer.headers["deprecation"]
        await _same_answer(apps, "/v1/profiles/p_0000000000000000000000", {**headers, **older})
    assert statuses == _STATUSES
    reader = {**apps.headers["reader"], **older}
    tag = (await apps.hot.get(path, headers=reader)).headers["ETag"]
    assert (await _same_answer(apps, path, {**reader, "If-None-Match": tag})).status_code == 304
    newest = await apps.hot.get(path, headers=apps.headers["reader"])
    assert newest.json()["primary_email"] == "older_reader@example.com"


async def test_hot_reads_are_labelled_with_the_route_template(apps: TwoApps) -> None:
    await apps.hot.get(await _create(apps, "labelled"), headers=apps.headers["reader"])
    await apps.hot.get("/v1/profiles/p_0000000000000000000000", headers=apps.headers["reader"])
    registry = apps.deployment.serving.metrics.registry
    for status in ("200", "404"):
        labels = {"method": "GET", "route": "/v1/profiles/{profile_id}", "status": status}
        assert registry.get_sample_value("keel_http_requests_total", labels) == 1


def test_only_a_one_segment_profile_path_is_a_hot_read() -> None:
    assert profile_id_of("/v1/profiles/p_abc") == "p_abc"
    assert profile_id_of("/v1/profiles/ spaced") == " spaced"
    others = ("/v1/profiles/", "/v1/profiles", "/v1/profiles/p_abc/", "/v1/profiles/p/x", "/v2/profiles/p")
    for path in others:
        assert profile_id_of(path) is None, path


async def test_the_framework_serves_what_the_hot_path_does_not_take(apps: TwoApps) -> None:
    """A hot read never reaches the framework; anything else always does."""
    reached: list[str] = []

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    hot = HotProfileReads(framework)
    app = apps.hot._transport.app  # type: ignore[attr-defined]  # the ASGI app under test
    app.state.services = apps.deployment.serving
    sent: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert isinstance(message["status"], int)
            sent.append(message["status"])

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    cases = [
        ("GET", "/v1/profiles/p_0000000000000000000000", NEWEST_VERSION),
        ("GET", "/v1/profiles/p_0000000000000000000000", "an older version"),
        ("GET", "/v1/profiles/p_0000000000000000000000", None),
        ("HEAD", "/v1/profiles/p_0000000000000000000000", NEWEST_VERSION),
        ("DELETE", "/v1/profiles/p_0000000000000000000000", NEWEST_VERSION),
        ("GET", "/v1/profiles", NEWEST_VERSION),
    ]
    for method, path, version in cases:
        with request_scope() as state:
            state.api_version = version
            scope = {
                "type": "http",
                "method": method,
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [(b"host", b"keel.test"), *bearer_header(apps.headers["reader"])],
                "app": app,
            }
            await hot(scope, receive, send)
    assert reached == [f"{m} {p}" for m, p, _ in cases[1:]]
    assert sent == [404, 204, 204, 204, 204, 204]


def bearer_header(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]
