"""GraphQL's automatic persisted queries shared by the fleet over Redis (keel.cache.redis_queries):
a query registered with one served process runs by its hash alone on another. Without Redis the
second process does not know it (the control), and a client registers it again there."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from testkit.processes import keel_nodes, keel_output

MISSING = "eu1_01M977N90FNC0XW4XT2ZE1XM79"


@contextmanager
def _two_nodes(tmp_path: Path, redis_url: str | None) -> Iterator[tuple[list[str], str]]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "KEEL_REDIS_URL"},
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_WORKERS": "1",
        **({"KEEL_REDIS_URL": redis_url} if redis_url else {}),
    }
    keel_output(env, "migrate")
    token = keel_output(env, "keys", "create", "--quiet").strip()
    with keel_nodes(2, env, tmp_path) as urls:
        yield urls, token


def _query() -> str:
    """A query no earlier run registered (the shared store may outlive a test session)."""
    return f"query Ping_{uuid.uuid4().hex}($id: ID!) {{ profile(id: $id) {{ id }} }}"


def _ask(url: str, token: str | None, query: str, *, with_query: bool) -> dict[str, object]:
    sha256 = hashlib.sha256(query.encode()).hexdigest()
    payload: dict[str, object] = {
        "variables": {"id": MISSING},
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256}},
    }
    if with_query:
        payload["query"] = query
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.post(f"{url}/graphql", json=payload, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def _not_found(body: dict[str, object]) -> bool:
    errors = body.get("errors")
    return isinstance(errors, list) and errors[0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def test_a_query_registered_with_one_node_runs_by_its_hash_on_another(tmp_path: Path, redis_url: str) -> None:
    with _two_nodes(tmp_path, redis_url) as (urls, token):
        query = _query()
        assert _not_found(_ask(urls[0], token, query, with_query=False))
        assert _ask(urls[0], token, query, with_query=True)["data"] == {"profile": None}
        assert _ask(urls[1], token, query, with_query=False)["data"] == {"profile": None}
        # A registration without a key stays with the node that got it: no anonymous writes to
        # the fleet's store.
        anonymous = _query()
        _ask(urls[0], None, anonymous, with_query=True)
        assert _not_found(_ask(urls[1], token, anonymous, with_query=False))


def test_without_redis_each_node_knows_only_the_queries_registered_with_it(tmp_path: Path) -> None:
    with _two_nodes(tmp_path, None) as (urls, token):
        query = _query()
        assert _ask(urls[0], token, query, with_query=True)["data"] == {"profile": None}
        assert _not_found(_ask(urls[1], token, query, with_query=False))
