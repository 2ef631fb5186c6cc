"""`JwksTokens` against a local issuer (testkit.oidc_issuer): the tokens it accepts, the forgeries
and broken tokens it refuses (one message for all), the leeway, how often it fetches the JWKS
(once per cache period, unknown `kid`s at most once per refetch interval, once for many
concurrent requests) and what it does while the issuer is down.

The JWKS comes from an in-process fetch that counts its calls, and time from a virtual clock
moved by hand: no test sleeps or depends on timing. Only the last tests fetch over HTTP."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from testkit.oidc_issuer import LocalIssuer

from keel.domain.end_users import EndUser
from keel.domain.errors import Unauthenticated, Unavailable
from keel.oidc.tokens import INVALID_TOKEN, JwksFetch, JwksTokens, http_fetch

SUBJECT = "user-1234"


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer()
    try:
        yield local
    finally:
        local.close()


class Clock:
    """A virtual monotonic clock: it moves only when a test advances it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Fetch:
    """The issuer's JWKS, as the bytes `http_fetch` would return, counting the calls; `failing`
    makes a call raise as an unreachable issuer does; `gate`, when set, holds every call until
    it is opened."""

    def __init__(self, issuer: LocalIssuer) -> None:
        self.issuer = issuer
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise OSError("connection refused")
        return json.dumps(self.issuer.jwks()).encode()


def make_tokens(
    issuer: LocalIssuer,
    fetch: JwksFetch,
    clock: Clock,
    *,
    algorithms: frozenset[str] = frozenset({"RS256", "ES256"}),
    **options: Any,
) -> JwksTokens:
    return JwksTokens(
        issuer=issuer.issuer,
        audience=issuer.audience,
        fetch=fetch,
        algorithms=algorithms,
        monotonic=clock,
        **options,
    )


async def assert_refused(tokens: JwksTokens, token: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        await tokens.verify(token)
    assert refused.value.detail == INVALID_TOKEN
    assert str(refused.value) == INVALID_TOKEN


def _b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


# -- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_valid_token_names_its_issuer_and_subject(issuer: LocalIssuer, algorithm: str) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())

    end_user = await tokens.verify(issuer.token(SUBJECT, algorithm=algorithm))

    assert end_user == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 1


async def test_a_subject_of_255_characters_is_accepted(issuer: LocalIssuer) -> None:
    tokens = make_tokens(issuer, Fetch(issuer), Clock())
    subject = "s" * 255

    assert await tokens.verify(issuer.token(subject)) == EndUser(issuer.issuer, subject)


async def test_keys_are_fetched_once_per_cache_period(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, cache_seconds=300.0)

    for _ in range(5):
        await tokens.verify(issuer.token(SUBJECT))
        await tokens.verify(issuer.token(SUBJECT, algorithm="ES256"))
        clock.advance(59)
    assert fetch.calls == 1  # 295 s later, still the first set

    clock.advance(5)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    await tokens.settled()  # a held key is used at once; the due refresh runs in the background
    assert fetch.calls == 2


# -- refused --------------------------------------------------------------------------------------


async def test_alg_none_is_refused_before_any_key_is_fetched(issuer: LocalIssuer) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())

    await assert_refused(tokens, issuer.unsigned(SUBJECT))
    assert fetch.calls == 0


async def test_hs256_signed_with_the_public_key_is_refused_before_any_key_is_fetched(
    issuer: LocalIssuer,
) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())

    await assert_refused(tokens, issuer.hmac_with_public_key(SUBJECT))
    assert fetch.calls == 0


async def test_a_token_signed_by_an_unpublished_key_is_refused(issuer: LocalIssuer) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())

    await assert_refused(tokens, issuer.signed_by_stranger(SUBJECT))
    assert fetch.calls == 1  # the kid is published: the signature is what fails


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("expired an hour ago", {"exp": int(time.time()) - 3600}),
        ("not valid for an hour", {"nbf": int(time.time()) + 3600}),
        ("issued in an hour", {"iat": int(time.time()) + 3600}),
        ("no iat", {"iat": None}),
        ("no exp", {"exp": None}),
        ("no sub", {"sub": None}),
        ("sub of 256 characters", {"sub": "s" * 256}),
        ("empty sub", {"sub": ""}),
        ("sub not a string", {"sub": 1234}),
        ("wrong audience", {"aud": "another-api"}),
        ("no audience", {"aud": None}),
        ("wrong issuer", {"iss": "https://login.evil.test/"}),
        ("no issuer", {"iss": None}),
    ],
)
@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_token_with_bad_claims_is_refused(
    issuer: LocalIssuer, algorithm: str, case: str, overrides: dict[str, Any]
) -> None:
    tokens = make_tokens(issuer, Fetch(issuer), Clock(), leeway_seconds=30.0)
    # The same token with good claims passes: only the claim named by `case` is wrong.
    assert await tokens.verify(issuer.token(SUBJECT, algorithm=algorithm)) == EndUser(issuer.issuer, SUBJECT)

    await assert_refused(tokens, issuer.token(SUBJECT, algorithm=algorithm, **overrides))


async def test_a_header_naming_an_rsa_key_with_an_ec_algorithm_is_refused(issuer: LocalIssuer) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())
    rsa_kid = issuer.kid("RS256")
    # Signed by the issuer's own EC key, so only the kid's key type is wrong.
    token = jwt.encode(
        issuer.claims(SUBJECT), issuer.keys[issuer.kid("ES256")], algorithm="ES256", headers={"kid": rsa_kid}
    )

    await assert_refused(tokens, token)
    assert fetch.calls == 1


async def test_a_jwks_key_naming_another_algorithm_is_not_used(issuer: LocalIssuer) -> None:
    rsa_kid = issuer.kid("RS256")

    async def fetch() -> bytes:
        jwks = issuer.jwks()
        for key in jwks["keys"]:
            if key["kid"] == rsa_kid:
                key["alg"] = "RS512"
        return json.dumps(jwks).encode()

    tokens = make_tokens(issuer, fetch, Clock())

    await assert_refused(tokens, issuer.token(SUBJECT, algorithm="RS256"))
    assert await tokens.verify(issuer.token(SUBJECT, algorithm="ES256")) == EndUser(issuer.issuer, SUBJECT)


async def test_a_token_without_a_kid_is_refused_before_any_key_is_fetched(issuer: LocalIssuer) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())
    token = jwt.encode(issuer.claims(SUBJECT), issuer.keys[issuer.kid("RS256")], algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(token)

    await assert_refused(tokens, token)
    assert fetch.calls == 0


@pytest.mark.parametrize("kid", [1234, "", "k" * 257, None])
async def test_a_kid_that_is_not_a_short_string_is_refused_before_any_key_is_fetched(
    issuer: LocalIssuer, kid: object
) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(issuer.claims(SUBJECT)).encode())

    await assert_refused(tokens, f"{header}.{body}.{_b64(b'signature')}")
    assert fetch.calls == 0


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "",
        "x",
        "..",
        "not a token at all",
        f"{_b64(b'[1, 2]')}.{_b64(b'{}')}.",
        f"{_b64(b'{not json')}.{_b64(b'{}')}.",
    ],
)
async def test_garbage_is_refused_before_any_key_is_fetched(issuer: LocalIssuer, token: str) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock())

    await assert_refused(tokens, token)
    assert fetch.calls == 0


async def test_a_garbled_body_or_signature_is_refused(issuer: LocalIssuer) -> None:
    tokens = make_tokens(issuer, Fetch(issuer), Clock())
    header, body, signature = issuer.token(SUBJECT).split(".")
    other_body = issuer.token("someone-else").split(".")[1]

    await assert_refused(tokens, f"{header}.{other_body}.{signature}")
    await assert_refused(tokens, f"{header}.{body}.{signature[:-4]}AAAA")
    await assert_refused(tokens, f"{header}.!!!.{signature}")
    await assert_refused(tokens, f"{header}.{body}.")


async def test_an_algorithm_outside_the_allow_list_is_refused_before_any_key_is_fetched(
    issuer: LocalIssuer,
) -> None:
    fetch = Fetch(issuer)
    tokens = make_tokens(issuer, fetch, Clock(), algorithms=frozenset({"RS256"}))

    await assert_refused(tokens, issuer.token(SUBJECT, algorithm="ES256"))
    assert fetch.calls == 0
    assert await tokens.verify(issuer.token(SUBJECT, algorithm="RS256")) == EndUser(issuer.issuer, SUBJECT)


# -- leeway ---------------------------------------------------------------------------------------


async def test_a_token_expired_10_s_ago_passes_within_a_30_s_leeway(issuer: LocalIssuer) -> None:
    tokens = make_tokens(issuer, Fetch(issuer), Clock(), leeway_seconds=30.0)
    now = int(time.time())

    token = issuer.token(SUBJECT, iat=now - 300, exp=now - 10)
    assert await tokens.verify(token) == EndUser(issuer.issuer, SUBJECT)


async def test_a_token_expired_10_s_ago_fails_without_leeway(issuer: LocalIssuer) -> None:
    tokens = make_tokens(issuer, Fetch(issuer), Clock(), leeway_seconds=0.0)
    now = int(time.time())

    await assert_refused(tokens, issuer.token(SUBJECT, iat=now - 300, exp=now - 10))


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithms",
    [{"RS256", "HS256"}, {"HS256"}, {"none"}, {"ES256", "none"}, {"HS512"}, set()],
)
def test_symmetric_algorithms_and_none_cannot_be_configured(
    issuer: LocalIssuer, algorithms: set[str]
) -> None:
    with pytest.raises(ValueError, match="asymmetric algorithms only"):
        JwksTokens(
            issuer=issuer.issuer,
            audience=issuer.audience,
            fetch=Fetch(issuer),
            algorithms=algorithms,
            monotonic=Clock(),
        )


# -- fetches of the JWKS --------------------------------------------------------------------------


async def test_a_flood_of_unknown_kids_costs_one_fetch_per_refetch_interval(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30.0)
    key = issuer.keys[issuer.kid("ES256")]

    def made_up_kid_token() -> str:
        kid = f"es256-{secrets.token_hex(8)}"
        return jwt.encode(issuer.claims(SUBJECT), key, algorithm="ES256", headers={"kid": kid})

    for _ in range(200):
        await assert_refused(tokens, made_up_kid_token())
    assert 1 <= fetch.calls <= 2  # the first fetch, and at most one refetch
    calls = fetch.calls

    clock.advance(31)
    await assert_refused(tokens, made_up_kid_token())
    assert fetch.calls == calls + 1

    # Spread over the next interval (20 s of it), the flood fetches nothing more.
    for _ in range(200):
        clock.advance(0.1)
        await assert_refused(tokens, made_up_kid_token())
    assert fetch.calls == calls + 1


async def test_a_rotated_key_is_fetched_once_the_refetch_interval_has_passed(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30.0, cache_seconds=300.0)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 1

    new_kid = issuer.rotate("RS256")
    new_token = issuer.token(SUBJECT, algorithm="RS256", kid=new_kid)
    # Within the refetch interval of the first fetch, the unknown kid fetches nothing.
    await assert_refused(tokens, new_token)
    clock.advance(29)
    await assert_refused(tokens, new_token)
    assert fetch.calls == 1

    clock.advance(2)
    assert await tokens.verify(new_token) == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 2
    # The old key is still published, and both are now held without another fetch.
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    assert await tokens.verify(new_token) == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 2


async def test_the_issuer_down_at_the_first_fetch_is_unavailable(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    fetch.failing = True
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30.0)

    with pytest.raises(Unavailable):
        await tokens.verify(issuer.token(SUBJECT))
    assert fetch.calls == 1

    # Back up: the next attempt is made once the refetch interval has passed.
    fetch.failing = False
    clock.advance(31)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 2


async def test_keys_fetched_before_stay_in_use_while_the_issuer_is_down(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, cache_seconds=300.0, refetch_seconds=30.0)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 1

    fetch.failing = True
    clock.advance(301)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    await tokens.settled()
    assert fetch.calls == 2  # the refresh was attempted, and failed
    assert await tokens.verify(issuer.token(SUBJECT, algorithm="ES256")) == EndUser(issuer.issuer, SUBJECT)
    await tokens.settled()
    assert fetch.calls == 2  # and is not retried before the refetch interval


async def test_a_jwks_that_is_not_json_keeps_the_keys_fetched_before(issuer: LocalIssuer) -> None:
    answers = [json.dumps(issuer.jwks()).encode(), b"<html>maintenance</html>", b'{"keys": 1}']

    async def fetch() -> bytes:
        return answers.pop(0)

    clock = Clock()
    tokens = make_tokens(issuer, fetch, clock, cache_seconds=300.0, refetch_seconds=30.0)
    for _ in range(3):
        assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
        await tokens.settled()
        clock.advance(301)
    assert answers == []


async def test_concurrent_verifies_on_a_cold_cache_share_one_fetch(issuer: LocalIssuer) -> None:
    fetch = Fetch(issuer)
    fetch.gate = asyncio.Event()  # holds the first fetch until every verify has started
    tokens = make_tokens(issuer, fetch, Clock())
    token = issuer.token(SUBJECT)

    async def open_gate() -> None:
        assert fetch.gate is not None
        fetch.gate.set()

    *end_users, _ = await asyncio.gather(*(tokens.verify(token) for _ in range(50)), open_gate())

    assert end_users == [EndUser(issuer.issuer, SUBJECT)] * 50
    assert fetch.calls == 1


async def test_concurrent_verifies_of_a_rotated_key_share_one_refetch(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30.0)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    new_token = issuer.token(SUBJECT, algorithm="RS256", kid=issuer.rotate("RS256"))
    clock.advance(31)
    fetch.gate = asyncio.Event()  # holds the refetch until every verify has started

    async def open_gate() -> None:
        assert fetch.gate is not None
        fetch.gate.set()

    *end_users, _ = await asyncio.gather(*(tokens.verify(new_token) for _ in range(10)), open_gate())

    assert end_users == [EndUser(issuer.issuer, SUBJECT)] * 10
    assert fetch.calls == 2


# -- over HTTP ------------------------------------------------------------------------------------


async def test_the_jwks_is_fetched_over_http_once(issuer: LocalIssuer) -> None:
    tokens = make_tokens(issuer, http_fetch(issuer.jwks_url), Clock())
    before = issuer.fetches

    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    assert await tokens.verify(issuer.token(SUBJECT, algorithm="ES256")) == EndUser(issuer.issuer, SUBJECT)
    assert issuer.fetches == before + 1
    assert tokens.fetches == 1


async def test_a_jwks_url_that_answers_404_is_unavailable(issuer: LocalIssuer) -> None:
    tokens = make_tokens(issuer, http_fetch(f"{issuer.jwks_url}/nope"), Clock())
    before = issuer.fetches

    with pytest.raises(Unavailable):
        await tokens.verify(issuer.token(SUBJECT))
    assert tokens.fetches == 1
    assert issuer.fetches == before  # the issuer counts only fetches it answered

    with pytest.raises(OSError, match="404"):
        await http_fetch(f"{issuer.jwks_url}/nope")()


# -- found by review --------------------------------------------------------------------------------


def _forged_header(issuer: LocalIssuer, header: dict[str, Any]) -> str:
    body = _b64(json.dumps(issuer.claims(SUBJECT)).encode())
    return f"{_b64(json.dumps(header).encode())}.{body}.{_b64(b'sig')}"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": ["RS256"], "kid": "x"},
        {"alg": {"RS256": 1}, "kid": "x"},
        {"alg": "RS256", "kid": ["x"]},
        {"alg": "RS256", "kid": {"a": 1}},
    ],
)
async def test_a_header_of_the_wrong_shape_is_refused_not_failed(
    issuer: LocalIssuer, header: dict[str, Any]
) -> None:
    fetch = Fetch(issuer)
    await assert_refused(make_tokens(issuer, fetch, Clock()), _forged_header(issuer, header))
    assert fetch.calls == 0


async def test_a_held_key_is_used_while_another_request_refetches(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30)
    await tokens.verify(issuer.token(SUBJECT))
    clock.advance(31)
    fetch.gate = asyncio.Event()
    key = issuer.keys[issuer.kid("RS256")]
    stranger = jwt.encode(issuer.claims(SUBJECT), key, algorithm="RS256", headers={"kid": "made-up"})
    refetch = asyncio.create_task(tokens.verify(stranger))
    await asyncio.sleep(0)  # the made-up kid's request holds the lock, its fetch held at the gate
    assert fetch.calls == 2
    # A valid token is answered from the keys held, without waiting for the fetch.
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    fetch.gate.set()
    with pytest.raises(Unauthenticated):
        await refetch


async def test_without_any_key_the_issuer_is_asked_again_within_a_second(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30)
    fetch.failing = True
    with pytest.raises(Unavailable):
        await tokens.verify(issuer.token(SUBJECT))
    fetch.failing = False
    clock.advance(0.5)
    with pytest.raises(Unavailable):
        await tokens.verify(issuer.token(SUBJECT))
    assert fetch.calls == 1
    clock.advance(0.6)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    assert fetch.calls == 2


async def test_only_access_tokens_when_asked(issuer: LocalIssuer) -> None:
    fetch = Fetch(issuer)
    strict = make_tokens(issuer, fetch, Clock(), access_tokens_only=True)
    kid = issuer.kid("RS256")
    claims = issuer.claims(SUBJECT)
    id_token = jwt.encode(claims, issuer.keys[kid], algorithm="RS256", headers={"kid": kid})
    access = jwt.encode(claims, issuer.keys[kid], algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})
    await assert_refused(strict, id_token)
    assert await strict.verify(access) == EndUser(issuer.issuer, SUBJECT)
    lenient = make_tokens(issuer, Fetch(issuer), Clock())
    assert await lenient.verify(id_token) == EndUser(issuer.issuer, SUBJECT)


@pytest.mark.parametrize("subject", ["a\x00b", "tab\there", "\x7f"])
async def test_a_subject_with_control_characters_is_refused(issuer: LocalIssuer, subject: str) -> None:
    await assert_refused(make_tokens(issuer, Fetch(issuer), Clock()), issuer.token(subject))


async def test_waiting_requests_never_queue_one_fetch_each(issuer: LocalIssuer) -> None:
    # The issuer hangs: each fetch takes the whole bound (the clock moves 5 s during it), then
    # fails. Requests that waited for that fetch do not start one each after it.
    clock = Clock()
    calls = 0

    async def hanging() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        clock.advance(5)
        raise OSError("timed out")

    tokens = make_tokens(issuer, hanging, clock, refetch_seconds=30)
    results = await asyncio.gather(
        *(tokens.verify(issuer.token(SUBJECT)) for _ in range(6)), return_exceptions=True
    )
    assert all(isinstance(result, Unavailable) for result in results)
    assert calls == 1


async def test_an_issuer_that_withdraws_its_keys_is_heard(issuer: LocalIssuer) -> None:
    # An empty set is the issuer's answer (after a compromise, say), not an outage: the keys
    # withdrawn are no longer accepted.
    answers = [json.dumps(issuer.jwks()).encode(), b'{"keys": []}']

    async def fetch() -> bytes:
        return answers.pop(0)

    clock = Clock()
    tokens = make_tokens(issuer, fetch, clock, cache_seconds=300.0, refetch_seconds=30.0)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    clock.advance(301)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    await tokens.settled()
    assert answers == []
    with pytest.raises(Unavailable):
        await tokens.verify(issuer.token(SUBJECT))


async def test_a_kid_not_held_while_the_issuer_cannot_be_asked_is_unavailable_not_refused(
    issuer: LocalIssuer,
) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, refetch_seconds=30)
    assert await tokens.verify(issuer.token(SUBJECT)) == EndUser(issuer.issuer, SUBJECT)
    fetch.failing = True
    clock.advance(31)
    key = issuer.keys[issuer.kid("RS256")]
    rotated = jwt.encode(issuer.claims(SUBJECT), key, algorithm="RS256", headers={"kid": "rotated-1"})
    with pytest.raises(Unavailable):  # the client may retry: whether the key exists is unknown
        await tokens.verify(rotated)
    assert fetch.calls == 2


async def test_one_background_refresh_at_a_time(issuer: LocalIssuer) -> None:
    fetch, clock = Fetch(issuer), Clock()
    tokens = make_tokens(issuer, fetch, clock, cache_seconds=300.0)
    token = issuer.token(SUBJECT)
    await tokens.verify(token)
    clock.advance(301)
    await asyncio.gather(*(tokens.verify(token) for _ in range(20)))
    await tokens.settled()
    assert fetch.calls == 2


async def test_a_subject_that_is_no_text_is_refused(issuer: LocalIssuer) -> None:
    await assert_refused(make_tokens(issuer, Fetch(issuer), Clock()), issuer.token("a\ud800b"))
