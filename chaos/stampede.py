"""The hot-key stampede's burst: `count` GETs of one path, each on a connection of its own opened
beforehand, written in one loop so that they reach Keel together.

An HTTP client library is too slow for that on one event loop: with httpx, 500 GETs left the
runner over about 5 s, so the first one's database read (a few hundred milliseconds behind the
proxy's latency) had long finished before most of the others were sent, and no read could join
it. Here a request is one `write` of bytes built once; then each answer is read (status line,
headers, a `Content-Length` body) and timed from the moment the first request was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

ANSWER_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer (refused, reset, closed, timed out)
    seconds: float  # from the burst's start to the end of the answer
    error: str = ""


async def burst(
    host: str, port: int, path: str, headers: dict[str, str], count: int
) -> tuple[float, list[Answer]]:
    """(when the burst started, on the monotonic clock; each request's answer)."""
    opened = await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(count)), return_exceptions=True
    )
    connections = [c for c in opened if not isinstance(c, BaseException)]
    failed = [c for c in opened if isinstance(c, BaseException)]
    if failed:
        await _close(connections)
        raise RuntimeError(f"{len(failed)} of {count} connections did not open: {failed[0]!r}")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        started = time.monotonic()
        for _, writer in connections:
            writer.write(request)
        answers = await asyncio.gather(*(_answer(reader, started) for reader, _ in connections))
    finally:
        await _close(connections)
    return started, answers


async def _close(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()
    for _, writer in connections:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _answer(reader: asyncio.StreamReader, started: float) -> Answer:
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                return Answer(0, time.monotonic() - started, f"no status line: {status_line!r}")
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            return Answer(int(parts[1]), time.monotonic() - started)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        return Answer(0, time.monotonic() - started, type(error).__name__)
