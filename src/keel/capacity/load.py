"""An open-loop HTTP/1.1 load generator on asyncio streams: requests are due at Poisson arrival
times whatever the answers, and a request's latency counts from when it was due, so a server
that falls behind shows it (no coordinated omission). Persistent connections, at most
`connections` open; a request that finds none free waits, and that wait is in its latency.

Its own cost is small for Python (no HTTP library: a status line, headers and a Content-Length
body are all Keel answers with), and is reported beside each run: a client short of CPU sends
late, which the report would show as the server's latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from keel.capacity.steps import Step, percentile

# What one request is: method, path, body (b"" for none), content type.
Request = tuple[str, str, bytes, str]


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    token: str

    @classmethod
    def parse(cls, url: str, token: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("give the deployment's root URL, without a path")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, token)

    def encode(self, request: Request) -> bytes:
        method, path, body, content_type = request
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: application/json\r\n"
        )
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body


class Answer:
    __slots__ = ("body", "close", "status")

    def __init__(self, status: int, body: bytes, close: bool) -> None:
        self.status = status
        self.body = body
        self.close = close


class ClosedBeforeAnswer(ConnectionError):
    """The connection ended before a byte of the answer came."""


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            raise ClosedBeforeAnswer from error
        raise
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            raise ValueError("a chunked answer: this client reads Content-Length bodies only")
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    body = await reader.readexactly(length) if length else b""
    return Answer(status, body, close)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# A connection idle this long is not reused: servers close idle keep-alive connections (Keel
# after KEEL_HTTP_KEEP_ALIVE_SECONDS, 5 s by default), and a request written to one the server
# is closing fails through no fault of the server's load.
IDLE_REUSE_SECONDS = 2.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # RFC 9110 9.2.2


class Client:
    """A pool of persistent connections to one target."""

    def __init__(self, target: Target, connections: int, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.waited = 0  # requests that found every connection busy and waited for one
        self._idle: list[tuple[Connection, float]] = []  # with when each was last used
        self._slots = asyncio.Semaphore(connections)
        self._tls = ssl.create_default_context() if target.scheme == "https" else None

    async def _connect(self) -> Connection:
        return await asyncio.open_connection(self.target.host, self.target.port, ssl=self._tls)

    def _reusable(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection, used = self._idle.pop()
            if now - used < IDLE_REUSE_SECONDS and not connection[1].is_closing():
                return connection
            connection[1].close()
        return None

    async def send(self, request: Request, budget_seconds: float | None = None) -> Answer:
        """One exchange, within `budget_seconds` (default the client's timeout) from now: the wait for a
        free connection, connecting, a retry and the answer all inside it (TimeoutError past it;
        a request still waiting for a connection then is never sent)."""
        async with asyncio.timeout(self.timeout if budget_seconds is None else budget_seconds) as scope:
            if self._slots.locked():
                self.waited += 1
            async with self._slots:
                deadline = scope.when()
                if deadline is not None and deadline <= asyncio.get_running_loop().time():
                    raise TimeoutError  # past its deadline already: not sent
                return await self._send(request)

    async def _send(self, request: Request) -> Answer:
        connection = self._reusable()
        reused = connection is not None
        try:
            if connection is None:
                connection = await self._connect()
            try:
                answer = await self._exchange(connection, request)
            except ClosedBeforeAnswer:
                if not (reused and request[0] in IDEMPOTENT):
                    raise
                # A reused connection the server closed cleanly before a byte of the answer: the
                # race every keep-alive client has with an idle timeout. Once more, on a new
                # connection, for a method that may be repeated (the server may have read it).
                # A reset, or an answer cut after its first byte, is a failure.
                connection[1].close()
                connection = await self._connect()
                answer = await self._exchange(connection, request)
        except BaseException:
            if connection is not None:
                connection[1].close()
            raise
        if answer.close:
            connection[1].close()
        else:
            self._idle.append((connection, time.monotonic()))
        return answer

    async def _exchange(self, connection: Connection, request: Request) -> Answer:
        reader, writer = connection
        writer.write(self.target.encode(request))
        return await read_answer(reader)

    async def close(self) -> None:
        for (_, writer), _ in self._idle:
            writer.close()
        self._idle.clear()


def _tail(answered_at: list[float]) -> float:
    """When 99 % of the answers had come."""
    if not answered_at:
        return 0.0
    answered_at.sort()
    return answered_at[max(0, math.ceil(0.99 * len(answered_at)) - 1)]


async def open_loop(
    client: Client,
    rate: float,
    seconds: float,
    request: Callable[[random.Random], Request],
    *,
    seed: int,
    server_cpu: Callable[[], float] | None = None,
) -> Step:
    """Send at `rate` requests/s (Poisson arrivals) for `seconds`; wait for every answer, each
    at most the client's timeout after it was due (else it failed: "timeout"); one Step, whose
    throughput is over the time to 99 % of the answers, and whose p99 counts failures as slower than
    any answer."""
    rng = random.Random(seed)  # noqa: S311 (arrival times, not secrets)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    answered_at: list[float] = []
    waited_before = client.waited

    async def one(due: float, what: Request) -> None:
        try:
            answer = await client.send(what, budget_seconds=due + client.timeout - time.perf_counter())
        except TimeoutError:
            failures["timeout"] = failures.get("timeout", 0) + 1
            return
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            failures["socket"] = failures.get("socket", 0) + 1
            return
        now = time.perf_counter()
        answered_at.append(now)
        if 200 <= answer.status < 300:
            latencies.append(now - due)
        else:
            failures[str(answer.status)] = failures.get(str(answer.status), 0) + 1

    tasks: list[asyncio.Task[None]] = []
    cpu_before = server_cpu() if server_cpu else 0.0
    start = time.perf_counter()
    due = start
    end = start + seconds
    while True:
        due += rng.expovariate(rate)
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, request(rng))))
    await asyncio.gather(*tasks)
    cpu = (server_cpu() - cpu_before) if server_cpu else None
    latencies.sort()
    sent = len(tasks)
    # The p99 of every request sent, a failure counting as slower than any answer: None when
    # more than 1 % failed.
    rank = math.ceil(0.99 * sent)
    p99_all = latencies[rank - 1] * 1000 if 0 < rank <= len(latencies) else None
    return Step(
        offered_rps=rate,
        # Answers that came after the step's last send count, over the time 99 % of the answers
        # took: a straggler or two do not shrink the step's throughput.
        seconds=max(seconds, _tail(answered_at) - start),
        sent=sent,
        ok=len(latencies),
        failed=sum(failures.values()),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_ms=(sum(latencies) / len(latencies) * 1000) if latencies else 0.0,
        server_cpu_us=(cpu / sent * 1e6) if cpu is not None and sent else None,
        failures=dict(sorted(failures.items())),
        p99_all_ms=p99_all,
        waited_for_connection=client.waited - waited_before,
    )
