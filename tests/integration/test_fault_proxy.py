"""The fault-injecting proxy, over real loopback sockets: an echo server of our own, and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from testkit.faultproxy import ControlServer, FaultProxy, FaultProxyClient, FaultProxyError, Faults
from testkit.faultproxy_process import FaultProxyProcess

REPO = Path(__file__).resolve().parents[2]
HANG = 0.3  # how long a read must stay unanswered to count as hanging


class EchoServer:
    """Echoes every byte back; closes its connections on stop (3.11's Server.close() does not)."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = EchoServer()
    port = await server.start()
    yield port
    await server.stop()


@contextlib.asynccontextmanager
async def running(proxy: FaultProxy) -> AsyncIterator[FaultProxy]:
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with running(FaultProxy("127.0.0.1", echo_port, seed=1)) as started:
        yield started


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout=10)


async def assert_hangs(reader: asyncio.StreamReader) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), timeout=HANG)


async def assert_reset_or_eof(reader: asyncio.StreamReader) -> None:
    try:
        data = await asyncio.wait_for(reader.read(1), timeout=5)
    except ConnectionResetError:
        return
    assert data == b""


async def test_data_passes_unchanged_both_ways(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 2000  # 512 KB: many chunks, every byte value
    async with connected(proxy.port) as (reader, writer):
        assert await round_trip(reader, writer, payload) == payload
        writer.write_eof()  # the half-close reaches the echo server, which closes; so do we
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    stats = proxy.stats()
    assert stats["bytes_up"] == stats["bytes_down"] == len(payload)
    assert stats["connections_accepted"] == 1


async def test_latency_delays_each_direction_of_an_open_connection(proxy: FaultProxy) -> None:
    loop = asyncio.get_running_loop()
    async with connected(proxy.port) as (reader, writer):
        assert await round_trip(reader, writer, b"warm") == b"warm"
        proxy.set_faults(Faults(latency_ms=150, jitter_ms=20))
        started = loop.time()
        assert await round_trip(reader, writer, b"ping") == b"ping"
        assert loop.time() - started >= 2 * 0.150  # once up, once down; jitter only adds


async def test_reset_aborts_an_open_connection_and_new_ones(proxy: FaultProxy) -> None:
    async with connected(proxy.port) as (reader, writer):
        assert await round_trip(reader, writer, b"ok") == b"ok"
        proxy.set_faults(Faults(reset_probability=1.0))
        writer.write(b"doomed")
        await assert_reset_or_eof(reader)
    async with connected(proxy.port) as (reader, _writer):
        await assert_reset_or_eof(reader)
    assert proxy.stats()["connections_reset"] == 2


async def test_blackhole_hangs_open_and_new_connections_until_cleared(proxy: FaultProxy) -> None:
    async with connected(proxy.port) as (reader, writer):
        assert await round_trip(reader, writer, b"before") == b"before"
        proxy.set_faults(Faults(blackhole=True))
        writer.write(b"held")
        await assert_hangs(reader)
        async with connected(proxy.port) as (new_reader, new_writer):
            new_writer.write(b"new")
            await assert_hangs(new_reader)
            assert proxy.stats()["connections_blackholed"] == 2
            proxy.clear()
            # Documented: held data is delivered once the blackhole is cleared, not dropped.
            assert await asyncio.wait_for(reader.readexactly(4), timeout=5) == b"held"
            assert await asyncio.wait_for(new_reader.readexactly(3), timeout=5) == b"new"
        assert await round_trip(reader, writer, b"after") == b"after"


async def test_refuse_closes_new_connections_with_a_reset(proxy: FaultProxy) -> None:
    proxy.set_faults(Faults(refuse_probability=1.0))
    async with connected(proxy.port) as (reader, writer):
        with contextlib.suppress(ConnectionError):
            writer.write(b"hello")
        await assert_reset_or_eof(reader)
    assert proxy.stats()["connections_refused"] == 1
    proxy.clear()
    async with connected(proxy.port) as (reader, writer):
        assert await round_trip(reader, writer, b"fine") == b"fine"


async def test_bandwidth_throttles_each_direction(proxy: FaultProxy) -> None:
    rate, size = 20_000, 10_000
    proxy.set_faults(Faults(bandwidth_bytes_per_second=rate))
    loop = asyncio.get_running_loop()
    async with connected(proxy.port) as (reader, writer):
        started = loop.time()
        assert await round_trip(reader, writer, b"x" * size) == b"x" * size
        # The first 1/20 s of bytes goes at once, the rest waits for the rate.
        assert loop.time() - started >= (size - rate / 20) / rate


def test_the_same_seed_gives_the_same_decisions() -> None:
    def decisions(seed: int) -> list[bool]:
        proxy = FaultProxy("127.0.0.1", 9, seed=seed)
        return [proxy.decide(0.5) for _ in range(200)]

    assert decisions(7) == decisions(7)
    assert decisions(7) != decisions(8)
    assert 60 < sum(decisions(7)) < 140


async def test_the_same_seed_refuses_the_same_connections(echo_port: int) -> None:
    async def pattern(seed: int) -> list[bool]:
        outcomes = []
        async with running(FaultProxy("127.0.0.1", echo_port, seed=seed)) as proxy:
            proxy.set_faults(Faults(refuse_probability=0.5))
            for _ in range(12):
                async with connected(proxy.port) as (reader, writer):
                    with contextlib.suppress(ConnectionError):
                        writer.write(b"?")
                    try:
                        outcomes.append(await asyncio.wait_for(reader.read(1), timeout=5) == b"?")
                    except ConnectionResetError:
                        outcomes.append(False)
            assert proxy.stats()["connections_refused"] == outcomes.count(False)
        return outcomes

    assert await pattern(3) == await pattern(3)


async def raw_http(port: int, request: bytes) -> tuple[int, dict[str, object]]:
    async with connected(port) as (reader, writer):
        writer.write(request)
        response = await asyncio.wait_for(reader.read(), timeout=5)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_control_api_round_trip(proxy: FaultProxy) -> None:
    control = ControlServer(proxy)
    await control.start()
    try:
        client = FaultProxyClient(control.url)
        applied = await asyncio.to_thread(client.set, latency_ms=5, reset_probability=0.25, blackhole=0.5)
        assert applied == Faults(latency_ms=5, reset_probability=0.25, blackhole=0.5) == proxy.faults
        assert await asyncio.to_thread(client.faults) == proxy.faults

        with pytest.raises(FaultProxyError, match="latency_ms") as bad_value:
            await asyncio.to_thread(client.set, latency_ms=-1)
        assert bad_value.value.status == 400
        with pytest.raises(FaultProxyError, match="unknown field") as unknown:
            await asyncio.to_thread(client.set, latency=5)
        assert unknown.value.status == 400
        status, body = await raw_http(
            control.port, b"PUT /faults HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope"
        )
        assert status == 400
        assert "not valid JSON" in str(body["error"])
        assert proxy.faults.reset_probability == 0.25  # a rejected PUT changes nothing

        await asyncio.to_thread(client.clear)
        assert proxy.faults == Faults()
        stats = await asyncio.to_thread(client.stats)
        assert stats == proxy.stats()
        assert (await raw_http(control.port, b"GET /nothing HTTP/1.1\r\n\r\n"))[0] == 404
    finally:
        await control.stop()


async def test_command_line_prints_its_ports_and_stops_on_sigterm(echo_port: int) -> None:
    command = [sys.executable, "-m", "testkit.faultproxy", "--listen", "127.0.0.1:0"]
    command += ["--target", f"127.0.0.1:{echo_port}", "--control", "127.0.0.1:0", "--seed", "4"]
    process = await asyncio.create_subprocess_exec(*command, cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        ready = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=15))
        async with connected(ready["listen_port"]) as (reader, writer):
            assert await round_trip(reader, writer, b"via cli") == b"via cli"
        client = FaultProxyClient(ready["control_url"])
        assert (await asyncio.to_thread(client.set, latency_ms=1)).latency_ms == 1
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_proxy_process_takes_faults_and_ends_with_its_parents_pipe(echo_port: int) -> None:
    proxy = FaultProxyProcess(echo_port, seed=2)
    await asyncio.to_thread(proxy.start)
    try:
        async with connected(proxy.port) as (reader, writer):
            assert await round_trip(reader, writer, b"via process") == b"via process"
            await asyncio.to_thread(proxy.set_faults, blackhole=True)
            writer.write(b"held")
            await assert_hangs(reader)
            await asyncio.to_thread(proxy.clear)
            assert await asyncio.wait_for(reader.readexactly(4), timeout=10) == b"held"
        process = proxy.process
        assert process is not None
        assert process.stdin is not None
        process.stdin.close()  # what the parent's exit does to the pipe
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        await asyncio.to_thread(proxy.stop)


async def test_postgres_through_the_proxy_hangs_under_blackhole_and_recovers(postgres_url: str) -> None:
    server = urlsplit(postgres_url)
    assert server.hostname is not None
    assert server.port is not None
    async with running(FaultProxy(server.hostname, server.port, seed=2)) as proxy:
        url = server._replace(netloc=f"{server.username}@127.0.0.1:{proxy.port}").geturl()
        pooled = await asyncpg.connect(url, timeout=10)
        try:
            assert await pooled.fetchval("select 1") == 1
            proxy.set_faults(Faults(blackhole=True))
            with pytest.raises(TimeoutError):
                await pooled.fetchval("select 1", timeout=0.5)
            proxy.clear()
            fresh = await asyncpg.connect(url, timeout=10)
            try:
                assert await fresh.fetchval("select 2") == 2
            finally:
                await fresh.close()
        finally:
            pooled.terminate()  # its state after a timed-out query is not what this test is about
