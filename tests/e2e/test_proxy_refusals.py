"""Abusive clients refused at the proxy (issue 20; docs/fleet.md#abusive-clients-refused-at-the-proxy):
a key Keel's limiter refused is written to HAProxy's table through its runtime API
(KEEL_PROXY_RUNTIME_API), and HAProxy, from the deployed configuration, answers that key's next
requests itself until one unit could conform, so the flood never reaches the node; other keys pass;
a change of the key over the admin API clears it. One node, its limiter its own (it is alone)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from testkit.health import until
from testkit.ports import free_port
from testkit.processes import keel_cmd, keel_output, server
from testkit.servers.haproxy import Haproxy, haproxy

# Ten units, then one a minute: a refused key waits about 60 s for its next unit (a list costs 10).
_ROOMY = [{"name": "second", "quota": 1000, "window_seconds": 1, "burst": 1000}]
PLANS = {
    "tiny": {"policies": [{"name": "slow", "quota": 10, "window_seconds": 600, "burst": 10}]},
    "standard": {"policies": _ROOMY},
    "anonymous": {"policies": _ROOMY},
}
MISSING = "/v1/profiles/eu1_01M983Y7N41FR15B53RW9D0WSX"  # a read of one unit, answered 404


@dataclass(frozen=True)
class Deployment:
    proxy: Haproxy
    node_url: str
    abuser: str  # a key on the tiny plan
    abuser_id: str
    other: str  # a key of its own, on the standard plan
    admin: str


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def _deployment(tmp_path: Path) -> Iterator[Deployment]:
    proxy_dir = tmp_path / "haproxy"
    env = {
        **{k: v for k, v in os.environ.items() if k != "KEEL_REDIS_URL"},
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_WORKERS": "1",
        "KEEL_RATELIMIT_PLANS": json.dumps(PLANS),
        "KEEL_PROXY_RUNTIME_API": f"unix:{proxy_dir / 'operator.sock'}",
    }
    keel_output(env, "migrate")
    abuser = keel_output(env, "keys", "create", "--plan", "tiny", "--quiet").strip()
    other = keel_output(env, "keys", "create", "--quiet").strip()
    admin = keel_output(env, "keys", "create", "--scopes", "admin", "--quiet").strip()
    port = free_port()
    with (
        server("keel", keel_cmd("serve"), {**env, "KEEL_PORT": str(port)}, tmp_path / "keel.log", port),
        haproxy(proxy_dir, [("node", port)]) as proxy,
    ):
        proxy.wait_for({"node": "UP"})
        yield Deployment(proxy, f"http://127.0.0.1:{port}", abuser, abuser.split("_")[1], other, admin)


def _decisions(node_url: str) -> float:
    """Every rate-limit decision the node has taken (allowed or not): a request that reached it."""
    total = 0.0
    for line in httpx.get(f"{node_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("keel_ratelimit_decisions_total{"):
            total += float(line.split()[-1])
    return total


def _deadline(proxy: Haproxy, key_id: str) -> int | None:
    """What HAProxy's table holds for `key_id` (the low 32 bits of a unix millisecond), if any."""
    match = re.search(rf"key={key_id} .*gpt0=(\d+)", proxy.command("show table keel_refused"))
    return int(match.group(1)) if match else None


def _ms_left(deadline: int, at: float) -> int:
    """The milliseconds from `at` (unix seconds) to a deadline's low 32 bits, as HAProxy counts."""
    return (deadline - int(at * 1000)) & 0xFFFFFFFF


def test_a_key_keel_refused_is_refused_by_haproxy_until_it_could_conform(tmp_path: Path) -> None:
    with _deployment(tmp_path) as fleet, httpx.Client(base_url=fleet.proxy.url, timeout=10) as client:
        sent = time.time()
        assert client.get(MISSING, headers=_bearer(fleet.abuser)).status_code == 404
        answered = time.time()
        for _ in range(9):
            assert client.get(MISSING, headers=_bearer(fleet.abuser)).status_code == 404
        refused = client.get(MISSING, headers=_bearer(fleet.abuser))
        started = time.time()
        assert refused.status_code == 429
        assert "refused_by" not in refused.json()  # Keel's own refusal, which tells the proxy
        keel_wait = int(refused.headers["Retry-After"])
        until(lambda: _deadline(fleet.proxy, fleet.abuser_id) is not None, "the refusal reaches HAProxy")
        deadline = _deadline(fleet.proxy, fleet.abuser_id)
        assert deadline is not None
        # Ahead, and never later than Keel would admit one unit again: the first unit spent
        # comes back 60 s after it was decided, which was between `sent` and `answered`.
        assert 0 < _ms_left(deadline, started) <= keel_wait * 1000
        assert _ms_left(deadline, answered) <= 60_000
        assert _ms_left(deadline, sent) > 59_000  # and not much sooner (rounding, the decision's time)

        reached = _decisions(fleet.node_url)
        answers = [client.get(MISSING, headers=_bearer(fleet.abuser)) for _ in range(50)]
        graphql = client.post("/graphql", json={"query": "{ __typename }"}, headers=_bearer(fleet.abuser))
        assert _decisions(fleet.node_url) == reached  # none of them reached the node

        for answer in answers:
            assert answer.status_code == 429
            assert answer.headers["content-type"] == "application/problem+json"
            body = answer.json()
            assert (body["type"], body["status"], body["refused_by"]) == (
                "urn:keel:problem:quota-exceeded",
                429,
                "proxy",
            )
            assert 1 <= int(answer.headers["Retry-After"]) <= keel_wait
            assert answer.headers["Cache-Control"] == "no-store"
        assert graphql.status_code == 429
        error = graphql.json()["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert 1 <= error["extensions"]["retryAfter"] <= keel_wait

        # Another key; the refused key's id in a token Keel would not accept (another scheme, a
        # secret too short to be one, sent twice); a path Keel does not limit: the node's to judge.
        assert client.get(MISSING, headers=_bearer(fleet.other)).status_code == 404
        for forged in (f"Token keel_{fleet.abuser_id}_{'x' * 43}", f"Bearer keel_{fleet.abuser_id}_short"):
            assert client.get(MISSING, headers={"Authorization": forged}).status_code == 401
        twice = [("Authorization", f"Bearer {fleet.other}"), ("Authorization", f"Bearer {fleet.abuser}")]
        assert client.get(MISSING, headers=twice).status_code == 401  # one set of credentials
        assert client.get("/healthz", headers=_bearer(fleet.abuser)).status_code == 200
        # A path written percent-encoded, or with a malformed escape, is a path Keel limits:
        # refused at HAProxy all the same (with GraphQL's answer on GraphQL's path).
        for path in (MISSING.replace("/v1/", "/%761/"), MISSING + "%", MISSING + "%zz"):
            answer = client.get(path, headers=_bearer(fleet.abuser))
            assert answer.json().get("refused_by") == "proxy", path
        graphql = client.post("/%67raphql", json={"query": "{ __typename }"}, headers=_bearer(fleet.abuser))
        assert graphql.json()["errors"][0]["extensions"]["refusedBy"] == "proxy"
        assert _decisions(fleet.node_url) > reached


def test_a_change_of_the_key_over_the_api_clears_it_at_the_proxy(tmp_path: Path) -> None:
    with _deployment(tmp_path) as fleet, httpx.Client(base_url=fleet.proxy.url, timeout=10) as client:
        for _ in range(11):
            client.get(MISSING, headers=_bearer(fleet.abuser))
        until(lambda: _deadline(fleet.proxy, fleet.abuser_id) is not None, "the refusal reaches HAProxy")
        assert client.get(MISSING, headers=_bearer(fleet.abuser)).json().get("refused_by") == "proxy"

        changed = client.patch(
            f"/v1/keys/{fleet.abuser_id}", json={"plan": "standard"}, headers=_bearer(fleet.admin)
        )
        assert changed.status_code == 200, changed.text
        until(lambda: _deadline(fleet.proxy, fleet.abuser_id) is None, "the proxy's entry is cleared")
        # On its new plan, the key is admitted by the node again.
        assert client.get(MISSING, headers=_bearer(fleet.abuser)).status_code == 404


def test_a_change_made_on_a_process_that_writes_to_no_proxy_clears_it_too(
    tmp_path: Path, redis_url: str
) -> None:
    """As deployed: keys are administered on a core, which writes to no proxy; the processes
    behind HAProxy hear of the change through the key-change push on Redis, and clear it."""
    proxy_dir = tmp_path / "haproxy"
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'keel.sqlite3'}",
        "KEEL_WORKERS": "1",
        "KEEL_RATELIMIT_PLANS": json.dumps(PLANS),
        "KEEL_REDIS_URL": redis_url,
    }
    keel_output(env, "migrate")
    abuser = keel_output(env, "keys", "create", "--plan", "tiny", "--quiet").strip()
    admin = keel_output(env, "keys", "create", "--scopes", "admin", "--quiet").strip()
    abuser_id = abuser.split("_")[1]
    fronted, administered = free_port(), free_port()
    told = {**env, "KEEL_PORT": str(fronted), "KEEL_PROXY_RUNTIME_API": f"unix:{proxy_dir / 'operator.sock'}"}
    with (
        server("fronted", keel_cmd("serve"), told, tmp_path / "fronted.log", fronted),
        server(
            "admin",
            keel_cmd("serve"),
            {**env, "KEEL_PORT": str(administered)},
            tmp_path / "admin.log",
            administered,
        ),
        haproxy(proxy_dir, [("node", fronted)]) as proxy,
        httpx.Client(base_url=proxy.url, timeout=10) as client,
    ):
        proxy.wait_for({"node": "UP"})
        for _ in range(11):
            client.get(MISSING, headers=_bearer(abuser))
        until(lambda: _deadline(proxy, abuser_id) is not None, "the refusal reaches HAProxy")
        changed = httpx.patch(
            f"http://127.0.0.1:{administered}/v1/keys/{abuser_id}",
            json={"plan": "standard"},
            headers=_bearer(admin),
            timeout=10,
        )
        assert changed.status_code == 200, changed.text
        until(lambda: _deadline(proxy, abuser_id) is None, "the push clears the proxy's entry")
        assert client.get(MISSING, headers=_bearer(abuser)).status_code == 404
