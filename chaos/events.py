"""What the change events of a run became: every event the database committed (the outbox,
read straight from PostgreSQL) against what the JetStream stream holds, read as a consumer
following docs/events.md would (every message, in stream order, deduplicated by event id).

The figures the experiments' checks read (`Run.values`):
- `events_committed`: events in the outbox (each committed with its change);
- `events_lost`: committed events the stream never got;
- `events_duplicated`: messages in the stream whose event id came before (JetStream's message-id
  deduplication should leave none: a relay killed between publishing and marking publishes again
  with the same id inside the duplicate window);
- `events_out_of_order`: per profile (the CloudEvent `subject`), events whose `version` is not
  above the one applied before, after deduplication, in stream order;
- `events_unknown`: messages whose id the outbox does not have (a publish of something never
  committed);
- `events_drain_seconds`: from the start of the phase the fault cleared in until no committed
  event was left unpublished (`inf`: not within the wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass

import asyncpg

from keel.events.jetstream import read_stream


@dataclass(frozen=True, slots=True)
class Published:
    event_id: str
    subject: str
    version: int | None


_UNPUBLISHED = "SELECT count(*) FROM event_outbox WHERE published_at IS NULL"


async def count_unpublished(database_url: str, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """Samples, every 100 ms until `stop`, how many committed events are not yet published
    (straight from PostgreSQL, past any fault proxy)."""
    connection = await asyncpg.connect(database_url)
    try:
        while not stop.is_set():
            samples.append((time.monotonic(), int(await connection.fetchval(_UNPUBLISHED))))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    finally:
        await connection.close()


async def drain_seconds(
    database_url: str, samples: list[tuple[float, int]], since: float, timeout_seconds: float
) -> float:
    """Seconds from `since` (monotonic) until the outbox had nothing unpublished: the first such
    sample taken during the run, else by polling on for `timeout_seconds`; `inf` if it never
    emptied."""
    drained = next((when for when, count in samples if when >= since and count == 0), None)
    if drained is not None:
        return drained - since
    deadline = time.monotonic() + timeout_seconds
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            if int(await connection.fetchval(_UNPUBLISHED)) == 0:
                return time.monotonic() - since
            if time.monotonic() >= deadline:
                return math.inf
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


async def committed_ids(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id FROM event_outbox ORDER BY seq")
    finally:
        await connection.close()
    return [str(row["id"]) for row in rows]


async def stream_messages(nats_url: str, stream: str) -> list[Published]:
    found = []
    async for message in read_stream(nats_url, stream, 1):
        event = json.loads(message.data)
        data = event.get("data") or {}
        version = data.get("version") if isinstance(data, dict) else None
        found.append(Published(event["id"], event["subject"], version if isinstance(version, int) else None))
    return found


def compare(committed: list[str], stream: list[Published]) -> dict[str, float]:
    """The figures above (but the drain time) from the outbox's ids and the stream's messages."""
    seen: set[str] = set()
    duplicated = 0
    out_of_order = 0
    applied: dict[str, int] = {}
    for message in stream:
        if message.event_id in seen:
            duplicated += 1
            continue
        seen.add(message.event_id)
        if message.version is None:
            continue  # not a profile event (an API key's)
        last = applied.get(message.subject)
        if last is not None and message.version <= last:
            out_of_order += 1
        applied[message.subject] = max(message.version, last or 0)
    known = set(committed)
    return {
        "events_committed": float(len(committed)),
        "events_published": float(len(seen)),
        "events_lost": float(len(known - seen)),
        "events_duplicated": float(duplicated),
        "events_out_of_order": float(out_of_order),
        "events_unknown": float(len(seen - known)),
    }


def summary(values: dict[str, float]) -> str:
    keys = ("committed", "published", "lost", "duplicated", "out_of_order", "unknown", "drain_seconds")
    return "events: " + ", ".join(
        f"{key.replace('_', ' ')} {values[f'events_{key}']:g}" for key in keys if f"events_{key}" in values
    )
