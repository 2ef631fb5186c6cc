"""End users reading and changing their own profile (`/v1/me`, GraphQL `me` and `updateMe`) with
access tokens of a local OpenID Connect issuer whose JWKS is served over HTTP on loopback, on
SQLite and PostgreSQL; and the admin routes that link a profile to its end user."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from testkit.oidc_issuer import LocalIssuer

from keel.config import Settings
from keel.domain.end_users import EndUser, LinkOutcome
from keel.domain.erasure import TombstoneCause
from keel.domain.ids import new_profile_id
from keel.service.ports import PersonalDataStore
from tests.e2e.conftest import Api, bearer, make_api
from tests.integration.conftest import truncate

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "nickname": {"type": "string", "endUser": "edit"},
        "plan": {"enum": ["free", "pro"], "endUser": "read"},
        "crm_id": {"type": "string"},
        "fraud_score": {"type": "number", "private": True},
    },
    "required": ["crm_id"],
    "additionalProperties": False,
}
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer()
    yield issuer
    issuer.close()


def _settings(database_url: str, schema_file: Path, issuer: LocalIssuer, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        attribute_schema=schema_file,
        oidc_issuer=issuer.issuer,
        oidc_audience=issuer.audience,
        oidc_jwks_url=issuer.jwks_url,
        **extra,
    )


@pytest.fixture
async def users_api(database_url: str, tmp_path: Path, issuer: LocalIssuer) -> AsyncIterator[Api]:
    if database_url.startswith("postgresql"):
        await truncate(database_url)
    schema_file = tmp_path / "attributes.schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    api, deployment = await make_api(_settings(database_url, schema_file, issuer))
    async with api.client:
        yield api
    await deployment.close()


async def _profile(api: Api, handle: str, subject: str | None = None) -> dict[str, Any]:
    created = await api.client.post(
        "/v1/profiles",
        json={
            "handle": handle,
            "emails": [{"address": f"{handle}@example.com", "primary": True, "verified": True}],
            "display_name": handle.title(),
            "attributes": {"nickname": "n", "plan": "free", "crm_id": "c-1", "fraud_score": 0.1},
        },
        headers=api.admin,
    )
    assert created.status_code == 201, created.text
    profile: dict[str, Any] = created.json()
    if subject is not None:
        linked = await api.client.put(
            f"/v1/profiles/{profile['id']}/end-user", json={"subject": subject}, headers=api.admin
        )
        assert linked.status_code == 200, linked.text
    return profile


async def test_an_end_user_reads_their_own_profile_in_their_view(users_api: Api, issuer: LocalIssuer) -> None:
    profile = await _profile(users_api, "ada_l", subject="user-ada")
    token = bearer(issuer.token("user-ada"))
    me = await users_api.client.get("/v1/me", headers=token)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["id"] == profile["id"]
    assert body["handle"] == "ada_l"
    # Only what the schema shows end users: not the app's crm_id, never the private score.
    assert body["attributes"] == {"nickname": "n", "plan": "free"}
    assert me.headers["etag"].endswith('.own.2026-12-07"')
    again = await users_api.client.get("/v1/me", headers={**token, "If-None-Match": me.headers["etag"]})
    assert again.status_code == 304
    # An ES256 token of the same subject is the same end user.
    es = await users_api.client.get("/v1/me", headers=bearer(issuer.token("user-ada", algorithm="ES256")))
    assert es.status_code == 200
    assert es.json()["id"] == profile["id"]
    # Pinned to the older version: the older shape, as for any other route.
    old = await users_api.client.get("/v1/me", headers={**token, "Keel-Version": "2026-11-28"})
    assert old.status_code == 200
    assert "primary_email" not in old.json()


async def test_an_end_user_reaches_no_other_route(users_api: Api, issuer: LocalIssuer) -> None:
    own = await _profile(users_api, "ada_l", subject="user-ada")
    other = await _profile(users_api, "bob_b", subject="user-bob")
    token = bearer(issuer.token("user-ada"))
    for method, path in [
        ("GET", f"/v1/profiles/{other['id']}"),
        ("GET", f"/v1/profiles/{own['id']}"),
        ("GET", "/v1/profiles"),
        ("GET", f"/v1/profiles?ids={other['id']}"),
        ("DELETE", f"/v1/profiles/{own['id']}"),
        ("GET", f"/v1/profiles/{own['id']}/export"),
        ("GET", f"/v1/profiles/{own['id']}/end-user"),
        ("GET", "/v1/handles/someone"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/webhooks"),
    ]:
        answer = await users_api.client.request(method, path, headers=token)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "bob" not in answer.text
    patched = await users_api.client.patch(
        f"/v1/profiles/{other['id']}", json={"display_name": "x"}, headers={**token, **MERGE}
    )
    assert patched.status_code == 403
    created = await users_api.client.post(
        "/v1/profiles",
        json={"handle": "eve_e", "emails": [{"address": "e@example.com", "primary": True}]},
        headers=token,
    )
    assert created.status_code == 403
    relink = await users_api.client.put(
        f"/v1/profiles/{other['id']}/end-user", json={"subject": "user-ada"}, headers=token
    )
    assert relink.status_code == 403
    # Bob's own token reaches Bob's profile only.
    bob = await users_api.client.get("/v1/me", headers=bearer(issuer.token("user-bob")))
    assert bob.json()["id"] == other["id"]


async def test_an_end_user_changes_only_what_is_theirs(users_api: Api, issuer: LocalIssuer) -> None:
    profile = await _profile(users_api, "ada_l", subject="user-ada")
    token = {**bearer(issuer.token("user-ada")), **MERGE}
    changed = await users_api.client.patch(
        "/v1/me",
        json={"display_name": "Ada Lovelace", "bio": "Analyst", "attributes": {"nickname": "countess"}},
        headers=token,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["display_name"] == "Ada Lovelace"
    assert changed.json()["attributes"] == {"nickname": "countess", "plan": "free"}
    # What the end user cannot see stayed as it was.
    stored = await users_api.client.get(f"/v1/profiles/{profile['id']}", headers=users_api.admin)
    assert stored.json()["attributes"] == {
        "nickname": "countess",
        "plan": "free",
        "crm_id": "c-1",
        "fraud_score": 0.1,
    }
    for patch, named in [
        ({"handle": "ada_2"}, "/handle"),
        ({"emails": [{"address": "new@example.com", "primary": True}]}, "/emails"),
        ({"attributes": {"plan": "pro"}}, "/attributes/plan"),
        ({"attributes": {"crm_id": "c-2"}}, "/attributes/crm_id"),
        ({"attributes": {"fraud_score": 0}}, "/attributes/fraud_score"),
        ({"attributes": {"unknown": 1}}, "/attributes/unknown"),
        ({"attributes": None}, "/attributes/plan"),
        ({"display_name": "Eve", "attributes": {"plan": "pro"}}, "/attributes/plan"),
    ]:
        refused = await users_api.client.patch("/v1/me", json=patch, headers=token)
        assert refused.status_code == 403, (patch, refused.text)
        assert named in refused.json()["detail"]
    after = await users_api.client.get(f"/v1/profiles/{profile['id']}", headers=users_api.admin)
    assert after.json()["version"] == stored.json()["version"]  # a refused patch changed nothing
    invalid = await users_api.client.patch("/v1/me", json={"attributes": {"nickname": 5}}, headers=token)
    assert invalid.status_code == 422
    # Only what is wrong: the attribute the schema requires is held (the end user cannot see it).
    assert [error["field"] for error in invalid.json()["errors"]] == ["/attributes/nickname"]
    # The schema requires an attribute the end user cannot read: the answer does not name it.
    assert "crm_id" not in invalid.text
    assert "fraud_score" not in invalid.text


async def test_if_match_guards_an_end_users_change(users_api: Api, issuer: LocalIssuer) -> None:
    await _profile(users_api, "ada_l", subject="user-ada")
    token = bearer(issuer.token("user-ada"))
    seen = await users_api.client.get("/v1/me", headers=token)
    first = await users_api.client.patch(
        "/v1/me", json={"bio": "one"}, headers={**token, **MERGE, "If-Match": seen.headers["etag"]}
    )
    assert first.status_code == 200
    stale = await users_api.client.patch(
        "/v1/me", json={"bio": "two"}, headers={**token, **MERGE, "If-Match": seen.headers["etag"]}
    )
    assert stale.status_code == 412
    empty = await users_api.client.patch(
        "/v1/me", json={"bio": "two"}, headers={**token, **MERGE, "If-Match": ""}
    )
    assert empty.status_code == 412  # names no version, as on /v1/profiles/{id}
    current = await users_api.client.patch(
        "/v1/me", json={"bio": "two"}, headers={**token, **MERGE, "If-Match": first.headers["etag"]}
    )
    assert current.status_code == 200
    assert current.json()["bio"] == "two"


async def test_tokens_that_are_not_valid_are_refused(users_api: Api, issuer: LocalIssuer) -> None:
    await _profile(users_api, "ada_l", subject="user-ada")
    now = int(time.time())
    forged = {
        "alg none": issuer.unsigned("user-ada"),
        "HS256 with the public key": issuer.hmac_with_public_key("user-ada"),
        "another key": issuer.signed_by_stranger("user-ada"),
        "expired": issuer.token("user-ada", exp=now - 3600, iat=now - 7200),
        "not yet valid": issuer.token("user-ada", nbf=now + 3600),
        "wrong audience": issuer.token("user-ada", aud="another-api"),
        "wrong issuer": issuer.token("user-ada", iss="https://evil.example/"),
        "no expiry": issuer.token("user-ada", exp=None),
    }
    for name, token in forged.items():
        answer = await users_api.client.get("/v1/me", headers=bearer(token))
        assert answer.status_code == 401, (name, answer.text)
        assert answer.json()["type"].endswith("unauthenticated")
        graphql = await users_api.client.post(
            "/graphql", json={"query": "{ me { id } }"}, headers=bearer(token)
        )
        assert graphql.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", name


async def test_who_may_call_me(users_api: Api, issuer: LocalIssuer) -> None:
    assert (await users_api.client.get("/v1/me")).status_code == 401
    key = await users_api.client.get("/v1/me", headers=users_api.admin)
    assert key.status_code == 403
    assert "end users" in key.json()["detail"]
    unlinked = await users_api.client.get("/v1/me", headers=bearer(issuer.token("nobody")))
    assert unlinked.status_code == 404


async def test_admins_link_and_unlink(users_api: Api, issuer: LocalIssuer) -> None:
    ada = await _profile(users_api, "ada_l", subject="user-ada")
    bob = await _profile(users_api, "bob_b")
    link = await users_api.client.get(f"/v1/profiles/{ada['id']}/end-user", headers=users_api.admin)
    assert link.json()["subject"] == "user-ada"
    assert link.json()["issuer"] == issuer.issuer
    taken = await users_api.client.put(
        f"/v1/profiles/{bob['id']}/end-user", json={"subject": "user-ada"}, headers=users_api.admin
    )
    assert taken.status_code == 409
    not_admin = await users_api.client.put(
        f"/v1/profiles/{bob['id']}/end-user", json={"subject": "user-bob"}, headers=users_api.writer
    )
    assert not_admin.status_code == 403
    missing = await users_api.client.put(
        f"/v1/profiles/{new_profile_id('eu1')}/end-user", json={"subject": "x"}, headers=users_api.admin
    )
    assert missing.status_code == 404
    elsewhere = await users_api.client.put(
        f"/v1/profiles/{new_profile_id('us1')}/end-user", json={"subject": "x"}, headers=users_api.admin
    )
    assert elsewhere.status_code == 421
    for subject in ["", "a\u0000b", "x" * 256, 7]:
        refused = await users_api.client.put(
            f"/v1/profiles/{bob['id']}/end-user", json={"subject": subject}, headers=users_api.admin
        )
        assert refused.status_code == 422, (subject, refused.text)
    # Relinking a profile replaces its end user: the first one no longer reaches it.
    relinked = await users_api.client.put(
        f"/v1/profiles/{ada['id']}/end-user", json={"subject": "user-ada-2"}, headers=users_api.admin
    )
    assert relinked.status_code == 200
    assert (await users_api.client.get("/v1/me", headers=bearer(issuer.token("user-ada")))).status_code == 404
    assert (
        await users_api.client.get("/v1/me", headers=bearer(issuer.token("user-ada-2")))
    ).status_code == 200
    gone = await users_api.client.delete(f"/v1/profiles/{ada['id']}/end-user", headers=users_api.admin)
    assert gone.status_code == 204
    assert (
        await users_api.client.get("/v1/me", headers=bearer(issuer.token("user-ada-2")))
    ).status_code == 404
    again = await users_api.client.delete(f"/v1/profiles/{ada['id']}/end-user", headers=users_api.admin)
    assert again.status_code == 404
    audit = await users_api.client.get("/v1/audit", headers=users_api.admin)
    entries = [entry for entry in audit.json()["items"] if entry["key_id"] == ada["id"]]
    actions = [entry["action"] for entry in entries]
    # Which end user, by the hash the logs use: never the subject.
    assert all(re.fullmatch(r"user_[0-9a-f]{16}", entry["detail"]["end_user"]) for entry in entries)
    assert "user-ada" not in audit.text
    assert actions == ["profile.end_user_unlinked", "profile.end_user_linked", "profile.end_user_linked"]


async def test_the_link_is_exported_and_erased_with_the_profile(users_api: Api, issuer: LocalIssuer) -> None:
    ada = await _profile(users_api, "ada_l", subject="user-ada")
    export = await users_api.client.get(f"/v1/profiles/{ada['id']}/export", headers=users_api.admin)
    assert export.json()["end_user"]["subject"] == "user-ada"
    assert re.search(r"user_[0-9a-f]{16}", export.text)  # the admin action's event names the end user
    core = users_api.keel.local
    store = cast(PersonalDataStore, core.store)  # the SQL stores are
    async with store.unit_of_work() as uow:
        await uow.personal_data.remove(ada["id"], core.clock.now(), TombstoneCause.ERASURE)
        await uow.commit()
    async with core.store.unit_of_work(read_only=True) as uow:
        assert await uow.subjects.subject_of(ada["id"]) is None
        assert await uow.subjects.profile_of(issuer.issuer, "user-ada") is None
    # A link that comes after the erasure finds no profile to link (it takes the same lock).
    async with store.unit_of_work() as uow:
        outcome = await uow.subjects.link(ada["id"], EndUser(issuer.issuer, "user-ada"), core.clock.now())
    assert outcome is LinkOutcome.NO_PROFILE
    # What was done to the profile stays in the admin log and its events, not to whom.
    audit = await users_api.client.get("/v1/audit", headers=users_api.admin)
    linked = [entry for entry in audit.json()["items"] if entry["key_id"] == ada["id"]]
    assert [entry["detail"] for entry in linked] == [{}]
    erased = await users_api.client.get(f"/v1/profiles/{ada['id']}/export", headers=users_api.admin)
    actions = [event for event in erased.json()["events"] if event["type"] == "keel.admin.action.v1"]
    assert [event["data"]["detail"] for event in actions] == [{}]
    assert re.search(r"user_[0-9a-f]{16}", erased.text) is None
    relink = await users_api.client.put(
        f"/v1/profiles/{ada['id']}/end-user", json={"subject": "user-ada"}, headers=users_api.admin
    )
    assert relink.status_code == 404


async def test_graphql_me_and_update_me(users_api: Api, issuer: LocalIssuer) -> None:
    ada = await _profile(users_api, "ada_l", subject="user-ada")
    token = bearer(issuer.token("user-ada"))
    read = await users_api.client.post(
        "/graphql", json={"query": "{ me { id handle attributes } }"}, headers=token
    )
    assert read.json()["data"]["me"] == {
        "id": ada["id"],
        "handle": "ada_l",
        "attributes": {"nickname": "n", "plan": "free"},
    }
    changed = await users_api.client.post(
        "/graphql",
        json={
            "query": 'mutation { updateMe(patch: {displayName: "Ada L", attributes: {nickname: "c"}})'
            " { displayName attributes } }"
        },
        headers=token,
    )
    assert changed.json()["data"]["updateMe"] == {
        "displayName": "Ada L",
        "attributes": {"nickname": "c", "plan": "free"},
    }
    refused = await users_api.client.post(
        "/graphql", json={"query": 'mutation { updateMe(patch: {handle: "ada_2"}) { id } }'}, headers=token
    )
    assert refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "/handle" in refused.json()["errors"][0]["message"]
    other = await users_api.client.post(
        "/graphql", json={"query": f'{{ profile(id: "{ada["id"]}") {{ id }} }}'}, headers=token
    )
    assert other.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    by_key = await users_api.client.post("/graphql", json={"query": "{ me { id } }"}, headers=users_api.admin)
    assert by_key.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


@pytest.fixture
async def emails_api(sqlite_url: str, tmp_path: Path, issuer: LocalIssuer) -> AsyncIterator[Api]:
    schema_file = tmp_path / "attributes.schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    settings = _settings(
        sqlite_url, schema_file, issuer, end_user_email_changes=True, end_user_handle_changes=True
    )
    api, deployment = await make_api(settings)
    async with api.client:
        yield api
    await deployment.close()


async def test_operator_rules_for_handles_and_emails(emails_api: Api, issuer: LocalIssuer) -> None:
    await _profile(emails_api, "ada_l", subject="user-ada")
    token = {**bearer(issuer.token("user-ada")), **MERGE}
    renamed = await emails_api.client.patch("/v1/me", json={"handle": "ada_2"}, headers=token)
    assert renamed.status_code == 200
    assert renamed.json()["handle"] == "ada_2"
    added = await emails_api.client.patch(
        "/v1/me",
        json={
            "emails": [
                {"address": "ada_l@example.com", "primary": True, "verified": True},
                {"address": "new@example.com", "primary": False},
            ]
        },
        headers=token,
    )
    assert added.status_code == 200, added.text
    assert [(e["address"], e["verified"]) for e in added.json()["emails"]] == [
        ("ada_l@example.com", True),
        ("new@example.com", False),
    ]
    self_verified = await emails_api.client.patch(
        "/v1/me",
        json={"emails": [{"address": "mine@example.com", "primary": True, "verified": True}]},
        headers=token,
    )
    assert self_verified.status_code == 403
    assert "/emails/0/verified" in self_verified.json()["detail"]


async def test_without_an_issuer_me_says_so(api: Api) -> None:
    answer = await api.client.get("/v1/me", headers=api.admin)
    assert answer.status_code == 404
    assert "not set up" in answer.json()["detail"] or "not served" in answer.json()["detail"]
