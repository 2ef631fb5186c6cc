"""End users' settings and schema marks are refused at start when they could not be served
safely: an incomplete issuer, a symmetric algorithm, a JWKS over plain HTTP, an edge, an
attribute both private and shown to end users."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from jsonschema.exceptions import SchemaError
from pydantic import SecretStr, ValidationError

from keel.admission.operations import DEFAULT_COSTS
from keel.bootstrap.core import _check_end_user_settings
from keel.config import Settings
from keel.ratelimit.catalog import RateLimitCatalog
from keel.service.attributes import AttributePolicy

ISSUER: dict[str, Any] = {
    "oidc_issuer": "https://login.example.com/",
    "oidc_audience": "keel-api",
    "oidc_jwks_url": "https://login.example.com/.well-known/jwks.json",
}


def test_a_whole_issuer_is_accepted() -> None:
    settings = Settings.model_validate(ISSUER)
    assert settings.end_users_enabled
    assert not Settings().end_users_enabled


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"oidc_audience": None}, "KEEL_OIDC_AUDIENCE missing"),
        ({"oidc_jwks_url": None}, "KEEL_OIDC_JWKS_URL missing"),
        ({"oidc_algorithms": ["RS256", "HS256"]}, "not HS256"),
        ({"oidc_algorithms": ["none"]}, "not none"),
        ({"oidc_jwks_url": "http://login.example.com/jwks.json"}, "must be https"),
        ({"oidc_jwks_url": "ftp://127.0.0.1/jwks.json"}, "must be https"),
        (
            {"core_url": "grpc://127.0.0.1:1", "core_api_key": SecretStr("keel_x")},
            "not by an edge",
        ),
    ],
)
def test_what_could_not_be_served_safely_is_refused(changes: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        Settings.model_validate({**ISSUER, **changes})


def test_a_jwks_on_loopback_may_be_plain_http() -> None:
    settings = Settings.model_validate({**ISSUER, "oidc_jwks_url": "http://127.0.0.1:8080/jwks.json"})
    assert settings.oidc_jwks_url == "http://127.0.0.1:8080/jwks.json"


def _policy(**properties: Any) -> AttributePolicy:
    return AttributePolicy({"type": "object", "properties": properties})


def test_the_schema_marks_what_end_users_read_and_change() -> None:
    policy = _policy(
        nickname={"type": "string", "endUser": "edit"},
        plan={"type": "string", "endUser": "read"},
        crm_id={"type": "string"},
        score={"type": "number", "private": True},
    )
    assert policy.end_user_readable == {"nickname", "plan"}
    assert policy.end_user_editable == {"nickname"}
    assert AttributePolicy().end_user_readable == frozenset()


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "number", "private": True, "endUser": "read"},
        {"type": "string", "endUser": "write"},
        {"type": "string", "endUser": True},
    ],
)
def test_a_mark_that_cannot_hold_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        _policy(field=spec)


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"oidc_plan": "gold"}, "KEEL_OIDC_PLAN"),
        ({"end_user_api_version": "2020-01-01"}, "KEEL_END_USER_API_VERSION"),
    ],
)
def test_a_plan_or_version_that_does_not_exist_is_refused_at_start(
    changes: dict[str, Any], said: str
) -> None:
    settings = Settings.model_validate({**ISSUER, **changes})
    guards = SimpleNamespace(catalog=RateLimitCatalog.build(costs=DEFAULT_COSTS))
    with pytest.raises(ValueError, match=said):
        _check_end_user_settings(settings, guards)  # type: ignore[arg-type]
    _check_end_user_settings(Settings.model_validate(ISSUER), guards)  # type: ignore[arg-type]
