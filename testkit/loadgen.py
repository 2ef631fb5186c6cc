"""A small open-loop HTTP/1.1 load generator for the scenarios: keep-alive connections over
asyncio streams, requests fired on a schedule (not when the previous one returns, so a slow
server cannot slow the load down), latency measured from the scheduled time.

Only what the scenarios need: GET/POST with a few headers, Content-Length bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Result:
    client: str
    kind: str
    scheduled: float  # seconds since the start of the run
    latency: float  # seconds, from the scheduled time to the end of the response
    status: int  # 0: transport error
    headers: dict[str, str]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


KEEP_HEADERS = (b"retry-after", b"ratelimit", b"ratelimit-policy", b"traceparent")
OWN_LAG: list[float] = []  # the last run's timer lag samples, seconds


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, headers: bytes, body: bytes = b"") -> Response:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n".encode()
        self.writer.write(head + headers + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        kept: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name in KEEP_HEADERS:
                kept[name.decode()] = value.strip().decode()
        payload = await self.reader.readexactly(length) if length else b""
        return Response(status, kept, payload)

    def close(self) -> None:
        self.writer.close()


def auth_headers(token: str | None, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"Authorization: Bearer {token}"] if token else []
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return "".join(f"{line}\r\n" for line in lines).encode()


@dataclass
class Stream:
    """One client's traffic: `rate(t)` requests per second at time t, each built by `request()`."""

    client: str
    kind: str
    ports: Sequence[int]  # requests go round-robin over these (a load balancer over Keel nodes)
    rate: Callable[[float], float]
    request: Callable[[], tuple[str, str, bytes, bytes]]  # method, path, headers, body
    pool: dict[int, list[Connection]] = field(default_factory=dict)
    sent: int = 0
    phase: float = field(default_factory=random.random)  # 0..1 of the first interval


async def _fire(stream: Stream, port: int, scheduled: float, origin: float, results: list[Result]) -> None:
    free = stream.pool.setdefault(port, [])
    method, path, headers, body = stream.request()
    connection: Connection | None = None
    try:
        for attempt in range(2):
            reused = attempt == 0 and bool(free)  # a retry always gets a new connection
            connection = free.pop() if reused else await Connection.open(port)
            try:
                response = await connection.request(method, path, headers, body)
                break
            except (asyncio.IncompleteReadError, ConnectionResetError):
                # A kept-alive connection the server closed while it sat idle in the pool: what
                # any HTTP client does, retry once on a new connection (GETs are idempotent).
                connection.close()
                connection = None
                if not reused or attempt:
                    raise
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        if connection is not None:
            connection.close()
        latency = time.perf_counter() - origin - scheduled
        results.append(
            Result(stream.client, stream.kind, scheduled, latency, 0, {"error": type(error).__name__})
        )
        return
    latency = time.perf_counter() - origin - scheduled
    results.append(Result(stream.client, stream.kind, scheduled, latency, response.status, response.headers))
    assert connection is not None  # the loop breaks only with an answer on a connection
    free.append(connection)


async def _drive(
    stream: Stream, duration: float, origin: float, results: list[Result], tasks: set[asyncio.Task[None]]
) -> None:
    # A random phase: independent clients are not in lockstep (in lockstep, 20 clients at 5/s
    # would arrive as one burst of 20 every 200 ms).
    t = stream.phase * (1.0 / max(stream.rate(0.0), 1e-9)) if stream.rate(0.0) > 0 else 0.0
    while True:
        rate = stream.rate(t)
        t += 1.0 / rate if rate > 0 else 0.05
        if t >= duration:
            return
        if rate <= 0:
            continue
        delay = origin + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        port = stream.ports[stream.sent % len(stream.ports)]
        stream.sent += 1
        task = asyncio.create_task(_fire(stream, port, t, origin, results))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def run(
    streams: Sequence[Stream],
    duration: float,
    *,
    events: Sequence[tuple[float, Callable[[], object]]] = (),
) -> list[Result]:
    """Drive every stream for `duration` seconds; `events` are (time, callback) run on schedule
    (stopping Redis, say). Waits for requests still in flight (up to 10 s) before returning."""
    results: list[Result] = []
    tasks: set[asyncio.Task[None]] = set()
    origin = time.perf_counter()

    async def at(when: float, action: Callable[[], object]) -> None:
        await asyncio.sleep(max(0.0, origin + when - time.perf_counter()))
        outcome = action()
        if asyncio.iscoroutine(outcome):
            await outcome

    async def probe_lag() -> None:
        # The generator's own timer lag: latencies it reports include it.
        while time.perf_counter() - origin < duration:
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            OWN_LAG.append(time.perf_counter() - began - 0.01)

    OWN_LAG.clear()
    await asyncio.gather(
        *(_drive(s, duration, origin, results, tasks) for s in streams),
        *(at(when, action) for when, action in events),
        probe_lag(),
    )
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    for stream in streams:
        for connections in stream.pool.values():
            for connection in connections:
                with contextlib.suppress(Exception):
                    connection.close()
    return results


def run_in_another_process(
    streams: Sequence[Stream], duration: float, *, nice: int = 0
) -> Callable[[], list[Result]]:
    """Start driving `streams` now, from a forked process of their own (niced by `nice`), as
    another client machine would; call the returned function to wait for their results.

    A client's measured latency includes its generator's own delays: driving a heavy client from
    the same event loop as light ones would charge the heavy one's client-side work to the light
    ones' latencies. Call with no event loop running (it forks)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def drive() -> None:
        os.nice(nice)
        results = asyncio.run(run(streams, duration))
        sender.send((results, OWN_LAG))

    process = context.Process(target=drive, daemon=True)
    process.start()
    sender.close()

    def results() -> list[Result]:
        received: tuple[list[Result], list[float]] = receiver.recv()  # before join: the pipe may be full
        process.join()
        OTHER_LAG[:] = received[1]
        return received[0]

    return results


OTHER_LAG: list[float] = []  # the timer lag of the last process `run_in_another_process` collected
