"""Webhook endpoints for experiments, in a process of their own (as the `/healthz` poller is: the
runner's event loop drives the traffic, and a receiver sharing it would add the runner's delays
to every delivery it times).

    python -m chaos.webhook_receivers --out FILE NAME=PORT [NAME=PORT ...]

Each NAME listens on 127.0.0.1:PORT and answers every POST as its mode says: `ok` (200),
a status such as `500`, `hang` (no answer: the sender's timeout ends the attempt, and when the
mode changes the held requests' connections are closed, still unanswered, so that every 2xx in
FILE is one the sender was sent) or `closed` (nothing listens on the port, and open connections
are reset: an endpoint that is down). Every request is appended to FILE as one JSON line, when it arrived
(`at`: monotonic seconds, which every process on the machine shares; `wall`: Unix time), with
its `webhook-*` headers, its body and the answer it got (`200`, `500` or `hang`).

Commands come on stdin, one per line: `mode NAME MODE`; each is answered `ok` on stdout once in
force. The process prints `ready` once every endpoint listens and ends when stdin closes.
Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import IO

MODES = ("ok", "hang", "closed")


class Endpoint:
    def __init__(self, name: str, port: int, out: IO[str]) -> None:
        self.name = name
        self.port = port
        self.mode = "ok"
        self._out = out
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed = asyncio.Event()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def set_mode(self, mode: str) -> None:
        if mode not in MODES and not mode.isdigit():
            raise ValueError(f"unknown mode {mode!r}")
        was, self.mode = self.mode, mode
        self._changed.set()  # requests held by `hang` are answered as the new mode says
        self._changed = asyncio.Event()
        if mode == "closed" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            for writer in list(self._writers):
                writer.transport.abort()  # a keep-alive connection must not outlive the outage
        elif was == "closed" and self._server is None:
            await self.listen()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                headers = {}
                for line in head.split("\r\n")[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = await self._answer(headers, body)
                if answer is None:
                    return  # a request held by `hang` is never answered: its connection closes
                writer.write(f"HTTP/1.1 {answer} Answer\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, headers: dict[str, str], body: bytes) -> int | None:
        mode = self.mode
        record = {
            "endpoint": self.name,
            "at": time.monotonic(),
            "wall": time.time(),
            "id": headers.get("webhook-id", ""),
            "timestamp": headers.get("webhook-timestamp", ""),
            "signature": headers.get("webhook-signature", ""),
            "body": body.decode("utf-8", "replace"),
            "answer": mode if mode == "hang" else ("200" if mode == "ok" else mode),
        }
        self._out.write(json.dumps(record) + "\n")
        if mode == "hang":
            await self._changed.wait()
            return None
        return 200 if mode == "ok" else int(mode)


async def serve(endpoints: dict[str, int], out: Path) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, None)

    with out.open("a", buffering=1) as lines:
        receivers = {name: Endpoint(name, port, lines) for name, port in endpoints.items()}
        for receiver in receivers.values():
            await receiver.listen()
        print("ready", flush=True)
        threading.Thread(target=read_stdin, daemon=True).start()
        while (command := await commands.get()) is not None:
            verb, name, mode = command.split()
            if verb != "mode" or name not in receivers:
                print(f"error {command}", flush=True)
                continue
            await receivers[name].set_mode(mode)
            print("ok", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("endpoints", nargs="+", help="NAME=PORT")
    arguments = parser.parse_args()
    endpoints = {name: int(port) for name, _, port in (e.partition("=") for e in arguments.endpoints)}
    asyncio.run(serve(endpoints, arguments.out))


if __name__ == "__main__":
    main()
