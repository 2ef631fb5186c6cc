"""How long a revoked API key keeps working on a fleet: pushed over Redis (keel.cache.
redis_key_revocations) against the key cache's TTL alone, in the same run.

    python -m bench.key_revocation [--nodes 3] [--trials 20] [--baseline-trials 5] [--ttl 2]
        [--via cli|api]

Each configuration serves `--nodes` Keel processes (one worker each) on one SQLite database, with
KEEL_API_KEY_CACHE_SECONDS=`--ttl`: "pushed" with KEEL_REDIS_URL (a throwaway Redis), "TTL only"
without. A trial creates a key, has every node cache it (a read of a missing profile: 404),
then revokes it here, in process, through the service function `keel keys revoke` calls (and
publishes it, when pushed), starting the clock just before. One thread per node then reads
until that node answers 401. The trial's figure is the time until the last node refused: the
revocation reached every node. Reported: median, p90 and max of each configuration, and the
median of pushed ÷ the median of TTL only. `--via api`: the key is expired now through the
first node's REST API (`POST /v1/keys/{id}/expire`, an admin key) instead, timed from just
before that request. Results: stdout and a new dated report under docs/performance/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `testkit` and `bench` when run as a script

from testkit.processes import interrupt_on_signals, keel_nodes, keel_output  # noqa: E402
from testkit.results import new_result_path  # noqa: E402
from testkit.servers.redis import redis_server  # noqa: E402

from bench.harness import code_state  # noqa: E402

MISSING = "eu1_01M977N90FNC0XW4XT2ZE1XM79"  # read with a valid key: 404; with a revoked one: 401
GIVE_UP_S = 120.0


def _status(client: httpx.Client, url: str, token: str) -> int:
    return client.get(
        f"{url}/v1/profiles/{MISSING}", headers={"Authorization": f"Bearer {token}"}
    ).status_code


async def _revoke(env: dict[str, str], key_id: str) -> tuple[float, bool]:
    """Revoke `key_id` as `keel keys revoke` does: when it began (perf_counter), and whether it
    was pushed."""
    from keel.bootstrap.lifecycle import build_services
    from keel.config import Settings
    from keel.service.auth import revoke_api_key

    settings = Settings(
        database_url=env["KEEL_DATABASE_URL"], redis_url=env.get("KEEL_REDIS_URL"), log_level="warning"
    )
    keel = await build_services(settings)
    try:
        started = time.perf_counter()
        if not await revoke_api_key(keel.local.store, keel.local.clock, key_id):
            raise RuntimeError(f"no active key {key_id}")
        told = await keel.key_revocations.publish(key_id) if keel.key_revocations is not None else None
        return started, told is not None
    finally:
        await keel.close()


def _expire_over_api(url: str, admin_token: str, key_id: str) -> tuple[float, bool]:
    """End `key_id` now through a node's REST API (`POST /v1/keys/{id}/expire`, as an admin
    would): when it began; whether it was pushed is the node's to say, and it does not."""
    started = time.perf_counter()
    answer = httpx.post(
        f"{url}/v1/keys/{key_id}/expire", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10
    )
    if answer.status_code != 200:
        raise RuntimeError(f"the expiry answered {answer.status_code}: {answer.text}")
    return started, True


def _trial(env: dict[str, str], urls: list[str], pushed: bool, admin_token: str | None = None) -> float:
    token = (
        keel_output(env, "keys", "create", "--scopes", "profiles:read", "--quiet").strip().splitlines()[-1]
    )
    with httpx.Client(timeout=10) as client:
        statuses = [_status(client, url, token) for url in urls]
    if statuses != [404] * len(urls):
        raise RuntimeError(f"the new key is not accepted everywhere: {statuses}")
    refused_at: dict[str, float] = {}
    go = threading.Event()

    def watch(url: str) -> None:
        with httpx.Client(timeout=10) as client:
            go.wait()
            give_up = time.perf_counter() + GIVE_UP_S
            while (status := _status(client, url, token)) == 404:
                if time.perf_counter() > give_up:
                    raise RuntimeError(f"{url} still accepts the revoked key")
            if status != 401:
                raise RuntimeError(f"{url} answered {status}")
            refused_at[url] = time.perf_counter()

    threads = [threading.Thread(target=watch, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    go.set()  # the watchers read (404) until the revocation lands; from when it began is timed
    key_id = token.split("_")[1]
    if admin_token is not None:  # --via api: the first node ends the key; the others are told
        revoked_at, said_pushed = _expire_over_api(urls[0], admin_token, key_id)
        said_pushed = pushed
    else:
        revoked_at, said_pushed = asyncio.run(_revoke(env, key_id))
    for thread in threads:
        thread.join(GIVE_UP_S + 10)
    if said_pushed != pushed:
        raise RuntimeError(f"pushed: expected {pushed}, the revocation said {said_pushed}")
    if len(refused_at) != len(urls):
        raise RuntimeError("a watcher failed (see above)")
    return max(refused_at.values()) - revoked_at


def _summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"median {statistics.median(ordered) * 1000:,.1f} ms, p90 {p90 * 1000:,.1f} ms,"
        f" max {ordered[-1] * 1000:,.1f} ms ({len(ordered)} trials)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--baseline-trials", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=2.0, help="KEEL_API_KEY_CACHE_SECONDS of both runs")
    parser.add_argument(
        "--via",
        choices=("cli", "api"),
        default="cli",
        help="cli: revoked as `keel keys revoke` does; api: expired now through the first node's REST API",
    )
    args = parser.parse_args()
    interrupt_on_signals()
    state = code_state()
    print(f"code: {state}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="keel-revocation-bench-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env = {
        **base,
        "KEEL_DATABASE_URL": f"sqlite:///{logs / 'keel.sqlite3'}",
        "KEEL_API_KEY_CACHE_SECONDS": f"{args.ttl:g}",
        "KEEL_WORKERS": "1",
        "KEEL_LOG_LEVEL": "warning",
        # The watchers read as fast as they can: no rate limit or shedding in their way.
        "KEEL_RATELIMIT_ENABLED": "false",
        "KEEL_LOAD_SHEDDING_ENABLED": "false",
    }
    keel_output(env, "migrate", timeout=120)
    admin_token = (
        keel_output(env, "keys", "create", "--scopes", "admin", "--quiet").strip().splitlines()[-1]
        if args.via == "api"
        else None
    )
    results: dict[str, list[float]] = {}
    with redis_server() as redis:
        for label, pushed, trials in (
            ("pushed", True, args.trials),
            ("TTL only", False, args.baseline_trials),
        ):
            run_env = {**env, "KEEL_REDIS_URL": redis.url} if pushed else env
            with keel_nodes(args.nodes, run_env, logs) as urls:
                results[label] = [_trial(run_env, urls, pushed, admin_token) for _ in range(trials)]
            print(f"{label}: {_summary(results[label])}", flush=True)
    ratio = statistics.median(results["pushed"]) / statistics.median(results["TTL only"])
    report = "\n".join(
        [
            "# API-key revocation across a fleet: pushed against the key cache's TTL"
            f" ({time.strftime('%Y-%m-%d')})",
            "",
            f"Command: `python -m bench.key_revocation --nodes {args.nodes} --trials {args.trials}"
            f" --baseline-trials {args.baseline_trials} --ttl {args.ttl:g} --via {args.via}`. Code: {state}.",
            f"{args.nodes} Keel processes (one worker each) on one SQLite database, key cache TTL"
            f" {args.ttl:g} s. The time from just before the revocation's transaction until the last"
            " node answered 401."
            + (
                " Here the key is not revoked but expired now, through the first node's REST API"
                " (`POST /v1/keys/{id}/expire` with an admin key): from just before that request."
                if args.via == "api"
                else ""
            ),
            "",
            "| configuration | until every node refused the key |",
            "|---|---|",
            *(f"| {label} | {_summary(seconds)} |" for label, seconds in results.items()),
            "",
            f"Median pushed ÷ median TTL only: {ratio:.4f}.",
            "",
        ]
    )
    path = new_result_path("key-revocation")
    path.write_text(report)
    print(report)
    print(f"written: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
