"""Erasures under faults: profiles with distinctive personal values, created over REST before the
run (one with an `Idempotency-Key`, so its outcome is stored; each updated once, so the outbox,
the NATS stream and the webhook deliveries hold copies), erased by the method's `erase` step,
then checked after the run: every erasure's outcome, and a scan of every row of every table and
of every message in the stream for their values.

Method steps (target `erasure`): `erase` (asks for each erasure, after reading the stream to
record that it holds the values), `check_running` (how many erasures are not completed yet: a
kill right after lands mid-saga), `time_completion` (completion is timed from here).

The figures the checks read (`Run.values`):
- `erasures_completed`: erasures `completed` by the end (waited for, bounded);
- `erasure_completed_seconds`: from `time_completion` until the last one completed (`inf`: not
  within the wait);
- `erasures_running_at_check`: erasures not completed at `check_running`;
- `erased_values_in_stream_before`: the erased profiles' values the stream held before `erase`;
- `erased_values_in_tables`, `erased_values_in_stream`: (value, table or message) hits of the
  erased profiles' values after the run; the same for a profile that was not erased
  (`kept_values_in_tables`, `kept_values_in_stream`): the scans see what they look for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

from chaos.traffic import Sample
from keel.events.jetstream import read_stream

if TYPE_CHECKING:
    from chaos.system import System

STREAM = "KEEL_EVENTS"
POLL_SECONDS = 0.2


def victim(n: int, token: str) -> dict[str, Any]:
    return {
        "handle": f"zqv{n}_{token}",
        "emails": [{"address": f"zqv{n}.{token}@example.org", "primary": True}],
        "display_name": f"Zebulon Victim {n} {token}",
        "bio": f"bio-zqv{n}-{token}",
    }


def values_of(document: dict[str, Any]) -> list[str]:
    return [
        document["handle"],
        *(e["address"] for e in document["emails"]),
        document["display_name"],
        document["bio"],
    ]


def hits(texts: dict[str, str], values: list[str]) -> int:
    """(value, place) pairs where a value appears, case-insensitively."""
    lowered = [v.lower() for v in values]
    return sum(1 for text in texts.values() for value in lowered if value in text.lower())


async def table_texts(database_url: str) -> dict[str, str]:
    """Every row of every table of the database, one text per table."""
    connection = await asyncpg.connect(database_url)
    try:
        tables = [
            str(row["table_name"])
            for row in await connection.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ]
        texts = {}
        for table in tables:
            rows = await connection.fetch(f'SELECT row_to_json(t)::text AS row FROM "{table}" t')  # noqa: S608 - names from the catalog
            texts[table] = "\n".join(str(row["row"]) for row in rows)
    finally:
        await connection.close()
    return texts


async def stream_texts(nats_url: str) -> dict[str, str]:
    """Every message the stream holds now, by stream sequence (a deleted one is not read)."""
    return {str(m.seq): m.data.decode() async for m in read_stream(nats_url, STREAM, 1)}


@dataclass
class ErasureScenario:
    admin: httpx.AsyncClient
    nats_url: str
    victims: dict[str, list[str]]  # profile id -> its personal values
    kept: list[str]
    config: dict[str, Any]
    erasures: dict[str, str] = field(default_factory=dict)  # erasure id -> profile id
    completed: dict[str, float] = field(default_factory=dict)  # erasure id -> when seen completed
    timed_from: float = math.nan
    _watch: asyncio.Task[None] | None = None

    async def act(self, action: str, args: dict[str, Any], values: dict[str, float]) -> None:
        if action == "erase":
            await self._erase(values)
        elif action == "check_running":
            values["erasures_running_at_check"] = float(len(self.erasures) - len(self.completed))
        elif action == "time_completion":
            self.timed_from = time.monotonic()
        else:
            raise ValueError(f"unknown action {action!r} on erasure")

    async def _erase(self, values: dict[str, float]) -> None:
        wanted = [v for vs in self.victims.values() for v in vs]
        # The relay publishes the set-up's events within moments; the scan waits for them.
        deadline = time.monotonic() + 10.0
        found = 0
        while time.monotonic() < deadline:
            found = hits(await stream_texts(self.nats_url), wanted)
            if found >= len(self.victims):
                break
            await asyncio.sleep(POLL_SECONDS)
        values["erased_values_in_stream_before"] = float(found)
        for profile_id in self.victims:
            response = await self.admin.post(f"/v1/profiles/{profile_id}/erasure")
            if response.status_code != 202:
                raise RuntimeError(f"erasure of {profile_id}: {response.status_code} {response.text}")
            self.erasures[response.json()["id"]] = profile_id
        self._watch = asyncio.create_task(self._watch_completion())

    async def _watch_completion(self) -> None:
        """Polls each erasure's status until all are completed; answers that fail (Keel killed)
        are polled again."""
        while len(self.completed) < len(self.erasures):
            for erasure_id in self.erasures:
                if erasure_id in self.completed:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    response = await self.admin.get(f"/v1/erasures/{erasure_id}")
                    if response.status_code == 200 and response.json()["state"] == "completed":
                        self.completed[erasure_id] = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)

    async def close(self) -> None:
        """Stops watching (also when the run failed before `finish`)."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    async def finish(self, database_url: str, values: dict[str, float], samples: list[Sample]) -> str:
        timeout = float(self.config.get("completed_timeout_seconds", 60))
        if self._watch is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._watch), timeout)
        await self.close()
        values["erasures_completed"] = float(len(self.completed))
        all_done = len(self.completed) == len(self.erasures) > 0
        last = max(self.completed.values(), default=math.nan)
        values["erasure_completed_seconds"] = max(0.0, last - self.timed_from) if all_done else math.inf
        erased = [v for vs in self.victims.values() for v in vs]
        tables, stream = await table_texts(database_url), await stream_texts(self.nats_url)
        values["erased_values_in_tables"] = float(hits(tables, erased))
        values["erased_values_in_stream"] = float(hits(stream, erased))
        values["kept_values_in_tables"] = float(hits(tables, self.kept))
        values["kept_values_in_stream"] = float(hits(stream, self.kept))
        places = sorted(
            name for name, text in tables.items() if any(v.lower() in text.lower() for v in erased)
        )
        return (
            f"erasure: {len(self.completed)} of {len(self.erasures)} completed,"
            f" the last {values['erasure_completed_seconds']:.2f} s after the consumer was back;"
            f" erased values in tables {values['erased_values_in_tables']:g}"
            + (f" ({', '.join(places)})" if places else "")
            + f", in the stream {values['erased_values_in_stream']:g}"
            f" (before the erasures {values['erased_values_in_stream_before']:g});"
            f" a kept profile's values in tables {values['kept_values_in_tables']:g},"
            f" in the stream {values['kept_values_in_stream']:g}"
        )


async def prepared(admin: httpx.AsyncClient, system: System, config: dict[str, Any]) -> ErasureScenario:
    """Creates the profiles to erase and one to keep (over REST, as an admin)."""
    if system.nats is None:
        raise ValueError('an experiment with `erasure` needs `"nats": true` in its system')
    token = secrets.token_hex(4)
    victims: dict[str, list[str]] = {}
    for n in range(int(config.get("profiles", 3))):
        document = victim(n, token)
        created = await admin.post(
            "/v1/profiles", json=document, headers={"Idempotency-Key": f"chaos-erase-{n}-{token}"}
        )
        created.raise_for_status()
        profile_id = created.json()["id"]
        renamed = {"display_name": f"Zebulon Victim {n} {token} later"}
        updated = await admin.patch(
            f"/v1/profiles/{profile_id}",
            content=json.dumps(renamed),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        updated.raise_for_status()
        victims[profile_id] = [*values_of(document), renamed["display_name"]]
    kept = {
        "handle": f"kept_{token}",
        "emails": [{"address": f"kept.{token}@example.com", "primary": True}],
        "display_name": f"Kept Person {token}",
        "bio": f"kept-bio-{token}",
    }
    (await admin.post("/v1/profiles", json=kept)).raise_for_status()
    return ErasureScenario(admin, system.nats.url, victims, values_of(kept), config)
