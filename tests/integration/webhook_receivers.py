"""Real HTTP receivers for the webhook tests: small asyncio servers on loopback that record
every request and answer as told (a status, or nothing until released: a hanging endpoint),
plus the address of an endpoint that is down (nothing listens there)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP/1.1 server (keep-alive, Content-Length bodies) answering `status` to every
    request, or, while `hanging`, answering nothing until `release()`."""

    def __init__(self, status: int = 200, *, hanging: bool = False) -> None:
        self.status = status
        self.hanging = hanging
        self.received: list[Received] = []
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    def release(self, status: int) -> None:
        """Answer `status` from now on, also to the requests held so far."""
        self.status = status
        self.hanging = False
        self._released.set()

    async def wait_for(self, count: int) -> list[Received]:
        """Returns once `count` requests arrived (the test's own timeout bounds a hang)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    async def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                headers = {}
                for line in lines:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                async with self._changed:
                    self.received.append(Received(request_line.split(" ")[1], headers, body))
                    self._changed.notify_all()
                if self.hanging:
                    await self._released.wait()
                writer.write(f"HTTP/1.1 {self.status} Answer\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


@asynccontextmanager
async def receiver(status: int = 200, *, hanging: bool = False) -> AsyncIterator[Receiver]:
    started = Receiver(status, hanging=hanging)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


def down_url() -> str:
    """A loopback URL where nothing listens: a port just bound and closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
