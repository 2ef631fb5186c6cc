import hmac

import pytest

from keel.domain.api_keys import Principal, Scope
from keel.domain.errors import Unauthenticated
from keel.service.auth import Authenticator, issue_api_key, revoke_api_key, token_digest
from tests.fakes import FakeClock, InMemoryStore


async def test_issued_key_authenticates_and_only_its_hash_is_stored() -> None:
    store = InMemoryStore()
    issued = await issue_api_key(
        store, FakeClock(), scopes=[Scope.PROFILES_READ], api_version="2026-11-28", name="test"
    )
    assert issued.token.startswith("keel_")
    stored = store.tables.api_keys[issued.key.id]
    assert issued.token not in repr(stored)
    principal = await Authenticator(store).authenticate(issued.token)
    assert principal.key_id == issued.key.id
    assert principal.scopes == {Scope.PROFILES_READ}
    assert principal.api_version == "2026-11-28"


@pytest.mark.parametrize("token", [None, "", "keel_x", "Bearer nothing", "keel_aaaaaaaaaaaaaaaa_" + "b" * 43])
async def test_bad_tokens_are_rejected(token: str | None) -> None:
    with pytest.raises(Unauthenticated):
        await Authenticator(InMemoryStore()).authenticate(token)


async def test_a_tampered_secret_is_rejected() -> None:
    store = InMemoryStore()
    issued = await issue_api_key(store, FakeClock(), scopes=[Scope.ADMIN], api_version="v", name="t")
    tampered = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    with pytest.raises(Unauthenticated):
        await Authenticator(store).authenticate(tampered)


async def test_lookups_are_cached_both_ways() -> None:
    store = InMemoryStore()
    issued = await issue_api_key(store, FakeClock(), scopes=[Scope.ADMIN], api_version="v", name="t")
    authenticator = Authenticator(store)
    reads_before = store.reads
    await authenticator.authenticate(issued.token)
    reads = store.reads
    assert reads == reads_before + 1  # the first use looks the key up
    for _ in range(5):
        await authenticator.authenticate(issued.token)
    assert store.reads == reads
    unknown = "keel_aaaaaaaaaaaaaaaa_" + "b" * 43
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(unknown)
    assert store.reads == reads + 1


async def test_the_cache_is_bounded() -> None:
    store = InMemoryStore()
    authenticator = Authenticator(store, max_entries=3)
    for n in range(10):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(f"keel_{n:016d}_" + "b" * 43)
    assert len(authenticator._answers._unknown) <= 3


async def test_unknown_tokens_cannot_push_out_known_keys() -> None:
    store = InMemoryStore()
    issued = await issue_api_key(store, FakeClock(), scopes=[Scope.ADMIN], api_version="v", name="t")
    authenticator = Authenticator(store, max_entries=3)
    await authenticator.authenticate(issued.token)
    for n in range(10):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(f"keel_{n:016d}_" + "b" * 43)
    reads = store.reads
    await authenticator.authenticate(issued.token)
    assert store.reads == reads


async def test_malformed_tokens_cost_no_lookup() -> None:
    store = InMemoryStore()
    authenticator = Authenticator(store)
    for token in ("keel_short", "Basic abc", "x" * 500):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(token)
    assert store.reads == 0


async def test_an_unknown_key_id_costs_the_same_comparison_as_a_wrong_secret() -> None:
    """Timing (issue 13): a known id with a wrong secret was measurably slower than an unknown
    id, which let a caller find out which key ids exist. Both are now one lookup by verifier that
    finds nothing, then one comparison of key ids."""
    store = InMemoryStore()
    issued = await issue_api_key(store, FakeClock(), scopes=[Scope.ADMIN], api_version="v", name="t")
    compared: list[tuple[int, int]] = []

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return hmac.compare_digest(a, b)

    authenticator = Authenticator(store, compare=counting_compare)
    wrong_secret = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    unknown_id = f"keel_{'z' * 16}_{issued.token.split('_', 2)[2]}"
    for token in (wrong_secret, unknown_id):
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(token)
    assert compared == [(16, 16), (16, 16)]


async def test_the_stored_value_does_not_authenticate_as_a_proof() -> None:
    store = InMemoryStore()
    issued = await issue_api_key(store, FakeClock(), scopes=[Scope.ADMIN], api_version="v", name="t")
    stored = store.tables.api_keys[issued.key.id].secret_hash
    assert stored != token_digest(issued.token)
    with pytest.raises(Unauthenticated):
        await Authenticator(store).resolve(issued.key.id, stored)
    principal = await Authenticator(store).resolve(issued.key.id, token_digest(issued.token))
    assert principal.key_id == issued.key.id


async def test_a_pushed_revocation_is_honoured_at_once_and_only_for_that_key() -> None:
    store = InMemoryStore()
    clock = FakeClock()
    revoked = await issue_api_key(store, clock, scopes=[Scope.ADMIN], api_version="v", name="revoked")
    kept = await issue_api_key(store, clock, scopes=[Scope.ADMIN], api_version="v", name="kept")
    authenticator = Authenticator(store, ttl=3600)
    for issued in (revoked, kept):
        await authenticator.authenticate(issued.token)
    assert await revoke_api_key(store, clock, revoked.key.id)
    await authenticator.authenticate(revoked.token)  # cached: without the push, the TTL decides
    reads = store.reads
    authenticator.forget_key(revoked.key.id)
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(revoked.token)
    await authenticator.authenticate(kept.token)
    assert store.reads == reads + 1  # the revoked key looked up again; the other still cached


async def test_an_answer_looked_up_while_a_revocation_arrived_is_used_once_and_not_kept() -> None:
    class RevokedMeanwhile(Authenticator):
        async def _load(self, key_id: str, digest: str) -> Principal | None:
            principal = await super()._load(key_id, digest)  # read before the revocation committed
            self.forget_key(key_id)  # its push arrives before this answer is kept
            return principal

    store = InMemoryStore()
    issued = await issue_api_key(store, FakeClock(), scopes=[Scope.ADMIN], api_version="v", name="t")
    authenticator = RevokedMeanwhile(store, ttl=3600)
    await authenticator.authenticate(issued.token)
    reads = store.reads
    await authenticator.authenticate(issued.token)
    assert store.reads == reads + 1  # not served from the cache: looked up again


async def test_a_gap_in_the_pushed_revocations_forgets_every_key() -> None:
    store = InMemoryStore()
    clock = FakeClock()
    issued = [
        await issue_api_key(store, clock, scopes=[Scope.ADMIN], api_version="v", name=f"k{n}")
        for n in range(3)
    ]
    authenticator = Authenticator(store, ttl=3600)
    for key in issued:
        await authenticator.authenticate(key.token)
    reads = store.reads
    authenticator.forget_all()
    for key in issued:
        await authenticator.authenticate(key.token)
    assert store.reads == reads + 3


async def test_a_fresh_resolution_asks_the_store_even_for_a_key_this_process_still_trusts() -> None:
    # How a core answers an edge's GetCaller: the edge caches the answer, so it must not be a
    # copy this core has not yet been told is revoked.
    store = InMemoryStore()
    clock = FakeClock()
    issued = await issue_api_key(store, clock, scopes=[Scope.ADMIN], api_version="v", name="t")
    authenticator = Authenticator(store, ttl=3600)
    digest = token_digest(issued.token)
    await authenticator.resolve(issued.key.id, digest)
    assert await revoke_api_key(store, clock, issued.key.id)
    assert (await authenticator.resolve(issued.key.id, digest)).key_id == issued.key.id  # the cache
    with pytest.raises(Unauthenticated):
        await authenticator.resolve(issued.key.id, digest, fresh=True)
