"""The event bus on NATS JetStream (nats-py).

Every call is bounded by `timeout_seconds`. Connecting is lazy and retried on the next publish:
a NATS that is down when Keel starts, or goes away later, costs the relay failed publishes (and
the outbox holds the events), never a request. While nats-py reconnects it may buffer a publish
the relay already counted as failed and send it once NATS is back; the relay then publishes it
again with the same `Nats-Msg-Id`, and JetStream drops the copy within its duplicate window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from keel.service.ports import EventPublishFailed

_log = structlog.get_logger("keel.events")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str = "KEEL_EVENTS"
    subject_prefix: str = "keel.events"
    duplicate_window_seconds: float = 120.0
    # How long the stream keeps an event (events carry personal data: an erasure deletes the
    # copies whose stream positions the outbox recorded, docs/privacy.md). Only for a stream
    # Keel creates.
    max_age_seconds: float = 7 * 86400.0


async def _log_error(error: Exception) -> None:
    # nats-py's default logs a traceback per failed reconnection attempt; one line is enough
    # (the relay counts its failed publishes in keel_outbox_relay_failures).
    _log.warning("nats_error", error=f"{type(error).__name__}: {error}")


async def _connect(url: str, timeout_seconds: float) -> Client:
    """A connection within `timeout_seconds` (TimeoutError otherwise). The bound is ours: with
    `max_reconnect_attempts=-1` (reconnect for ever once connected), nats-py's first connect to
    a server that is down never gives up either, and a relay that dropped its connection after a
    failed publish would wait there until NATS came back, its lease unrenewed. A first
    connection that fails is retried by the next publish, not in the background."""
    async with asyncio.timeout(timeout_seconds):
        return await nats.connect(
            url,
            error_cb=_log_error,
            connect_timeout=timeout_seconds,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            name="keel-outbox-relay",
        )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> None:
    """Creates the stream when there is none; a stream that exists is left as it is (its limits
    may be an operator's choice: Keel does not overwrite them)."""
    try:
        await js.stream_info(spec.name)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=spec.name,
        subjects=[f"{spec.subject_prefix}.>"],
        duplicate_window=spec.duplicate_window_seconds,
        max_age=spec.max_age_seconds,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Another process created it in between (with another configuration): it stays.
        _log.info("events_stream_exists", stream=spec.name)


class JetStreamPublisher:
    def __init__(self, url: str, spec: StreamSpec, *, timeout_seconds: float) -> None:
        self._url = url
        self._spec = spec
        self._timeout = timeout_seconds
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()

    async def _context(self) -> JetStreamContext:
        async with self._connecting:
            if self._js is None:
                client = await _connect(self._url, self._timeout)
                try:
                    js = client.jetstream(timeout=self._timeout)
                    async with asyncio.timeout(self._timeout):
                        await ensure_stream(js, self._spec)
                except BaseException:
                    await client.close()
                    raise
                self._client, self._js = client, js
            return self._js

    async def publish(
        self, subject: str, message_id: str, payload: bytes, traceparent: str | None = None
    ) -> int | None:
        """Publishes once, acknowledged by the stream; the stream sequence it was stored at (a
        duplicate's is the first copy's). After any failure the connection is dropped, so that
        the next publish connects again and makes sure the stream exists: a stream deleted under
        a running relay (an operator, a reset server) is created again instead of every publish
        failing with no responders until the process restarts."""
        try:
            js = await self._context()
            headers = {"Nats-Msg-Id": message_id}
            if traceparent is not None:
                headers["traceparent"] = traceparent
            ack = await js.publish(subject, payload, timeout=self._timeout, headers=headers)
        except (NatsError, OSError, TimeoutError) as error:
            await self.close()
            raise EventPublishFailed(f"{type(error).__name__}: {error}") from error
        return ack.seq if ack.stream == self._spec.name else None

    async def erase(self, copies: tuple[tuple[int, str], ...]) -> None:
        """Deletes the stream's messages at these positions, each only if it is the event named
        beside it (its `Nats-Msg-Id`): a stream deleted and created again (by an operator, or by
        `publish` after that) restarts its positions, and another event there is left alone.
        JetStream's message delete overwrites the message's storage unless asked not to
        (`no_erase`, which is not sent). A message already gone (aged out, deleted before) is
        what was wanted. The whole call is bounded by the timeout per message. An API error
        leaves the connection (which the relay shares) open; a transport failure drops it."""
        if not copies:
            return
        try:
            js = await self._context()
            async with asyncio.timeout(self._timeout * len(copies)):
                for position, event_id in copies:
                    await self._delete(js, position, event_id)
        except APIError as error:
            raise EventPublishFailed(f"{type(error).__name__}: {error}") from error
        except (NatsError, OSError, TimeoutError) as error:
            await self.close()
            raise EventPublishFailed(f"{type(error).__name__}: {error}") from error

    async def _delete(self, js: JetStreamContext, position: int, event_id: str) -> None:
        try:
            message = await js.get_msg(self._spec.name, position)
        except NotFoundError:
            return  # gone already
        if (message.headers or {}).get("Nats-Msg-Id") != event_id:
            return  # another event: the stream's positions restarted since this one was recorded
        try:
            await js.delete_msg(self._spec.name, position)
        except APIError:
            # Deleted in between (aged out, another runner): the delete's error code for that is
            # a generic one (10057), so the position is read again; gone (404) is what was wanted.
            try:
                await js.get_msg(self._spec.name, position)
            except NotFoundError:
                return
            raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._js = self._client, None, None
            try:
                async with asyncio.timeout(self._timeout):
                    await client.close()
            except (NatsError, OSError, TimeoutError):
                pass


@dataclass(frozen=True, slots=True)
class StreamMessage:
    seq: int
    data: bytes


async def read_stream(
    url: str, stream: str, from_seq: int, *, timeout_seconds: float = 5.0
) -> AsyncIterator[StreamMessage]:
    """The stream's messages from `from_seq` to its last one now (`keel events tail`)."""
    client = await _connect(url, timeout_seconds)
    try:
        js = client.jetstream(timeout=timeout_seconds)
        info = await js.stream_info(stream)
        last = info.state.last_seq
        for seq in range(max(from_seq, info.state.first_seq, 1), last + 1):
            try:
                message = await js.get_msg(stream, seq)
            except NotFoundError:
                continue  # removed by the stream's limits
            yield StreamMessage(seq, message.data or b"")
    finally:
        await client.close()
