"""A fault-injecting TCP proxy for chaos experiments (stdlib only, asyncio).

Put it between Keel and a dependency (PostgreSQL, Redis): Keel connects to the proxy, the proxy
connects to the real server and copies bytes both ways. On command it injects faults, each with a
probability:

- ``latency_ms`` + ``jitter_ms`` (drawn with ``latency_probability``): every forwarded chunk, in
  both directions, is held for ``latency_ms`` plus a uniform 0..``jitter_ms`` (so ``latency_ms``
  is a floor). Order within a connection is kept: a chunk never overtakes an earlier one.
- ``reset_probability``: drawn on each new connection and on each forwarded chunk; a hit aborts
  both sides with a TCP RST (SO_LINGER 0). An idle pooled connection is reset when next used.
- ``blackhole``: ``true``/``false``, or a probability drawn per connection (on accept, and for
  open connections each time the ``blackhole`` value changes). A blackholed
  connection passes no data either way but stays open, so reads hang, like a network
  partition. New connections are accepted but stay silent, and the target is not contacted.
  **When the blackhole is cleared, held data is delivered, not dropped** (as TCP retransmission
  would after a partition heals): chunks the proxy had read go out, in order, and then whatever
  the kernel buffered meanwhile. A client that timed out in between sees its late answer.
- ``bandwidth_bytes_per_second``: throttles each direction of each connection (0 = unlimited).
- ``refuse_probability``: a new connection is closed with an RST as soon as it is accepted. The
  kernel completes the TCP handshake before the proxy sees the connection, so the client's
  connect succeeds and its first read or write fails with a reset, not ECONNREFUSED.

Faults apply to connections that are already open as well as to new ones: database clients pool
their connections, so a fault that only hit new connections would test nothing.

Decisions come from one ``random.Random(seed)``: the same seed and the same sequence of events
give the same decisions (a probability of 0 or 1 draws nothing). Concurrent connections make the
event order, and so the decisions, depend on scheduling.

``proxy.stats()`` counts connections accepted, refused, reset (by the fault) and open, those
whose target could not be reached, and bytes forwarded up (to the target) and down.

From a test (in the event loop)::

    proxy = FaultProxy("127.0.0.1", postgres_port, seed=1)
    await proxy.start()
    try:
        ...  # point the client at proxy.port
        proxy.set_faults(Faults(latency_ms=200, jitter_ms=50))
        ...
        proxy.clear()
    finally:
        await proxy.stop()

``ControlServer(proxy)`` adds the HTTP API below to a proxy in your own loop; call the blocking
``FaultProxyClient`` from another thread or process, never from that loop.

From a shell::

    python -m testkit.faultproxy --listen 127.0.0.1:6433 --target 127.0.0.1:5432 \\
        --control 127.0.0.1:6480 --seed 7
    # prints {"listen_port": 6433, "control_url": "http://127.0.0.1:6480", ...} when ready

    curl -s 127.0.0.1:6480/faults
    curl -s -X PUT 127.0.0.1:6480/faults -d '{"latency_ms": 200, "jitter_ms": 50}'
    curl -s -X PUT 127.0.0.1:6480/faults -d '{"blackhole": true}'
    curl -s -X PUT 127.0.0.1:6480/faults -d '{"reset_probability": 0.05}'
    curl -s -X DELETE 127.0.0.1:6480/faults
    curl -s 127.0.0.1:6480/stats

``--exit-on-stdin-eof`` stops the proxy when its stdin closes (a parent process that holds the
pipe: `testkit.faultproxy_process.FaultProxyProcess`).

``PUT /faults`` replaces the whole fault set (omitted fields go back to off); an unknown field or
a bad value answers 400 with ``{"error": "..."}``. From a script use ``FaultProxyClient`` (sync,
urllib). SIGTERM or SIGINT stops the CLI cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http
import json
import math
import random
import signal
import socket
import struct
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

CHUNK_BYTES = 65536
# Chunks read ahead of the writer per direction: enough to pipeline latency, small enough that a
# slow or blackholed receiver pushes back on the sender as a real network would.
QUEUE_CHUNKS = 16
# Writes per second when throttling: small pieces make the rate smooth rather than bursty.
THROTTLE_STEPS_PER_SECOND = 20
CLOSE_GRACE_SECONDS = 1.0
MAX_CONTROL_BODY = 65536

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _check_number(name: str, value: object, *, at_most: float = math.inf) -> None:
    wanted = "a number between 0 and 1" if at_most == 1.0 else "a finite number >= 0"
    # bool is an int subclass, but `true` for a latency is a client bug, not 1 ms.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= at_most):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Faults:
    """The faults to inject; all off by default. Invalid values raise ValueError."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    latency_probability: float = 1.0
    reset_probability: float = 0.0
    blackhole: bool | float = False
    bandwidth_bytes_per_second: float = 0.0  # 0 = unlimited
    refuse_probability: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "bandwidth_bytes_per_second"):
            _check_number(name, getattr(self, name))
        for name in ("latency_probability", "reset_probability", "refuse_probability"):
            _check_number(name, getattr(self, name), at_most=1.0)
        if not isinstance(self.blackhole, bool):
            _check_number("blackhole", self.blackhole, at_most=1.0)

    @property
    def blackhole_probability(self) -> float:
        return float(self.blackhole)

    @classmethod
    def from_json(cls, data: object) -> Faults:
        """Build from a decoded JSON object; ValueError names the unknown field or bad value."""
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object of fault fields")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _ResetFault(Exception):
    """Raised inside a connection when the dice say reset."""


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger on, timeout 0: close() sends RST instead of FIN, which is what a reset looks like.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(*writers: asyncio.StreamWriter) -> None:
    """Close gracefully, but never wait long on a peer that does not read.

    Every close() happens before the first await, so a cancelled close still closes everything.
    """
    for writer in writers:
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE_SECONDS):
            for writer in writers:
                with contextlib.suppress(OSError):  # the peer reset first: closed either way
                    await writer.wait_closed()
    except TimeoutError:
        pass
    finally:
        for writer in writers:
            writer.transport.abort()  # a no-op once closed; drops what a silent peer never read


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


class _Listener:
    """A stream server that can stop its open connections too (3.11's Server.close() does not)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._run, host, port)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("not listening: call start() first")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def stop(self) -> None:
        self._closing = True
        if self._server is None:
            return
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:  # accepted just before stop(), started after it: nobody would cancel us
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except asyncio.CancelledError:
            # stop() cancelled us: end normally, as 3.11's stream server logs a cancelled handler
            # as an error (it calls task.exception() on it).
            if not self._closing:
                raise
        finally:
            self._tasks.discard(task)


class _Pipe:
    """One direction of a proxied connection, in two stages joined by a bounded queue.

    The reader stamps each chunk with the time it may leave; the writer holds it until then. So
    latency delays every chunk without adding up across chunks, and order is kept.
    """

    def __init__(
        self,
        connection: _Connection,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        count: Callable[[int], None],
    ) -> None:
        self._connection = connection
        self._proxy = connection.proxy
        self._source = source
        self._sink = sink
        self._count = count
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self._last_due = 0.0
        self._throttle_ready_at = 0.0

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._connection.flowing.wait()
            chunk = await self._source.read(CHUNK_BYTES)
            if not chunk:
                await self._queue.put((self._last_due, b""))  # EOF, after every chunk before it
                return
            faults = self._proxy.faults
            if self._proxy.decide(faults.reset_probability):
                raise _ResetFault
            self._last_due = max(loop.time() + self._proxy.delay_for(faults), self._last_due)
            await self._queue.put((self._last_due, chunk))

    async def write(self) -> None:
        while True:
            due, chunk = await self._queue.get()
            await _sleep_until(due)
            await self._connection.flowing.wait()
            if not chunk:
                if self._sink.can_write_eof():
                    self._sink.write_eof()  # half-close: the other direction may still be talking
                return
            await self._send(chunk)

    async def _send(self, chunk: bytes) -> None:
        rate = self._proxy.faults.bandwidth_bytes_per_second
        if not rate:
            self._sink.write(chunk)
            self._count(len(chunk))
            await self._sink.drain()
            return
        loop = asyncio.get_running_loop()
        step = max(1, int(rate / THROTTLE_STEPS_PER_SECOND))
        for start in range(0, len(chunk), step):
            piece = chunk[start : start + step]
            await _sleep_until(self._throttle_ready_at)
            self._sink.write(piece)
            self._count(len(piece))
            self._throttle_ready_at = max(self._throttle_ready_at, loop.time()) + len(piece) / rate
            await self._sink.drain()


class _Connection:
    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self._client_reader, self._client_writer = client
        self._upstream_writer: asyncio.StreamWriter | None = None
        self.flowing = asyncio.Event()
        self.flowing.set()

    @property
    def blackholed(self) -> bool:
        return not self.flowing.is_set()

    def set_blackholed(self, blackholed: bool) -> None:
        if blackholed:
            self.flowing.clear()
        else:
            self.flowing.set()

    async def serve(self) -> None:
        try:
            await self._serve()
        finally:
            await self._close()

    async def _serve(self) -> None:
        await self.flowing.wait()  # a blackholed new connection stays silent and never dials out
        try:
            upstream_reader, self._upstream_writer = await asyncio.open_connection(*self.proxy.target)
        except OSError:
            self.proxy.count("upstream_failures")
            self._abort()  # the target is down: the client sees a reset, as it would without us
            return
        if self.proxy.decide(self.proxy.faults.reset_probability):
            self._reset()
            return
        up = _Pipe(self, self._client_reader, self._upstream_writer, self.proxy.counter("bytes_up"))
        down = _Pipe(self, upstream_reader, self._client_writer, self.proxy.counter("bytes_down"))
        try:
            async with asyncio.TaskGroup() as group:
                for pipe in (up, down):
                    group.create_task(pipe.read())
                    group.create_task(pipe.write())
        except* _ResetFault:
            self._reset()
        except* OSError:
            self._abort()  # one side broke or reset: pass the reset on to the other

    def _reset(self) -> None:
        self.proxy.count("connections_reset")
        self._abort()

    def _abort(self) -> None:
        for writer in (self._client_writer, self._upstream_writer):
            if writer is not None:
                _abort_with_rst(writer)

    async def _close(self) -> None:
        await _close(*(w for w in (self._client_writer, self._upstream_writer) if w is not None))


class FaultProxy:
    """A TCP proxy to ``target_host:target_port`` that injects the faults set on it."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        # Seeded on purpose: a chaos run must be repeatable, this is not for security.
        self._random = random.Random(seed)  # noqa: S311
        self._faults = Faults()
        self._listener = _Listener(self._accept)
        self._connections: dict[int, _Connection] = {}  # insertion order keeps re-rolls repeatable
        self._next_id = 0
        self._counts = dict.fromkeys(
            (
                "connections_accepted",
                "connections_refused",
                "connections_reset",
                "upstream_failures",
                "bytes_up",
                "bytes_down",
            ),
            0,
        )

    async def start(self) -> None:
        await self._listener.start(*self._listen)

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        await self._listener.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Apply ``faults`` from now on, to open connections as well as new ones."""
        previous, self._faults = self._faults, faults
        if faults.blackhole != previous.blackhole:
            for connection in self._connections.values():
                connection.set_blackholed(self.decide(faults.blackhole_probability))

    def clear(self) -> None:
        self.set_faults(Faults())

    def decide(self, probability: float) -> bool:
        """One fault decision: True with ``probability``, from the seeded generator."""
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        return self._random.random() < probability

    def delay_for(self, faults: Faults) -> float:
        """Seconds to hold one chunk under ``faults``."""
        if faults.latency_ms <= 0 and faults.jitter_ms <= 0:
            return 0.0
        if not self.decide(faults.latency_probability):
            return 0.0
        jitter = self._random.uniform(0.0, faults.jitter_ms) if faults.jitter_ms > 0 else 0.0
        return (faults.latency_ms + jitter) / 1000.0

    def stats(self) -> dict[str, int]:
        open_connections = list(self._connections.values())
        return {
            **self._counts,
            "connections_open": len(open_connections),
            "connections_blackholed": sum(connection.blackholed for connection in open_connections),
        }

    def count(self, name: str, amount: int = 1) -> None:
        self._counts[name] += amount

    def counter(self, name: str) -> Callable[[int], None]:
        return lambda amount: self.count(name, amount)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count("connections_accepted")
        if self.decide(self._faults.refuse_probability):
            self.count("connections_refused")
            _abort_with_rst(writer)
            return
        connection = _Connection(self, (reader, writer))
        connection.set_blackholed(self.decide(self._faults.blackhole_probability))
        key, self._next_id = self._next_id, self._next_id + 1
        self._connections[key] = connection
        try:
            await connection.serve()
        finally:
            del self._connections[key]


class ControlServer:
    """HTTP/JSON control of a FaultProxy: GET/PUT/DELETE /faults, GET /stats."""

    def __init__(self, proxy: FaultProxy, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._proxy = proxy
        self._bind = (host, port)
        self._listener = _Listener(self._handle)

    async def start(self) -> None:
        await self._listener.start(*self._bind)

    async def stop(self) -> None:
        await self._listener.stop()

    @property
    def port(self) -> int:
        return self._listener.address[1]

    @property
    def url(self) -> str:
        host, port = self._listener.address
        return f"http://{host}:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer: Mapping[str, object]
        try:
            try:
                method, path, body = await _read_request(reader)
                status, answer = self._route(method, path, body)
            except ValueError as error:
                status, answer = 400, {"error": str(error)}
            payload = json.dumps(answer).encode()
            head = (
                f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request; nothing to answer
        finally:
            await _close(writer)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Mapping[str, object]]:
        if path == "/faults":
            if method == "GET":
                return 200, self._proxy.faults.to_json()
            if method == "PUT":
                self._proxy.set_faults(Faults.from_json(_decode_json(body)))
                return 200, self._proxy.faults.to_json()
            if method == "DELETE":
                self._proxy.clear()
                return 200, self._proxy.faults.to_json()
            return 405, {"error": f"{method} not allowed on /faults; use GET, PUT or DELETE"}
        if path == "/stats":
            if method == "GET":
                return 200, self._proxy.stats()
            return 405, {"error": f"{method} not allowed on /stats; use GET"}
        return 404, {"error": f"no such resource {path}; try /faults or /stats"}


def _decode_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the body is not valid JSON: {error}") from None


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """Just enough HTTP/1.1 for curl and urllib: request line, headers, Content-Length body."""
    request_line = (await reader.readline()).decode("latin-1").split()
    if len(request_line) != 3:
        raise ValueError("malformed HTTP request line")
    method, target, _version = request_line
    length = 0
    while (line := (await reader.readline()).decode("latin-1").strip()) != "":
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit() or int(value) > MAX_CONTROL_BODY:
                raise ValueError("bad or too large Content-Length")
            length = int(value)
    body = await reader.readexactly(length)
    return method.upper(), urllib.parse.urlsplit(target).path, body


class FaultProxyError(RuntimeError):
    """The control API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class FaultProxyClient:
    """Synchronous client for the control API, for scripts (blocking: not from the proxy's loop)."""

    def __init__(self, control_url: str, *, timeout: float = 5.0) -> None:
        if urllib.parse.urlsplit(control_url).scheme not in ("http", "https"):
            raise ValueError(f"control_url must be http(s), got {control_url!r}")
        self._base = control_url.rstrip("/")
        self._timeout = timeout

    def set(self, **faults: Any) -> Faults:
        """Replace the fault set (omitted fields are off); returns what the proxy now applies."""
        return Faults.from_json(self._request("PUT", "/faults", faults))

    def clear(self) -> None:
        self._request("DELETE", "/faults")

    def faults(self) -> Faults:
        return Faults.from_json(self._request("GET", "/faults"))

    def stats(self) -> dict[str, int]:
        answer: dict[str, int] = self._request("GET", "/stats")
        return answer

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self._base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return json.load(response)
        except urllib.error.HTTPError as error:
            with error:  # an HTTPError holds the open response
                detail = error.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail)["error"]
            raise FaultProxyError(error.code, detail) from None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    proxy = FaultProxy(*args.target, listen_host=args.listen[0], listen_port=args.listen[1], seed=args.seed)
    control = ControlServer(proxy, host=args.control[0], port=args.control[1])
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if args.exit_on_stdin_eof:
        # The parent holds our stdin: when it exits, however it exits, so does the proxy.
        def wait_for_eof() -> None:
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=wait_for_eof, daemon=True).start()
    try:
        await proxy.start()
        await control.start()
        ready = {
            "listen_host": proxy.address[0],
            "listen_port": proxy.port,
            "control_port": control.port,
            "control_url": control.url,
            "target": f"{proxy.target[0]}:{proxy.target[1]}",
            "seed": args.seed,
        }
        print(json.dumps(ready), flush=True)  # the parent process waits for this line
        await stopping.wait()
    finally:
        await control.stop()
        await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.faultproxy", description="Fault-injecting TCP proxy."
    )
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT (0 = any)")
    parser.add_argument("--target", type=_host_port, required=True, help="HOST:PORT of the real server")
    parser.add_argument("--control", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT for HTTP")
    parser.add_argument("--seed", type=int, default=0, help="seed for the fault decisions")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
