"""The least an ASGI app under uvicorn can do to refuse a request: the same 429 problem and
rate-limit headers Keel sends, prebuilt, with no identity, no limiter and no metrics. The rate-limit
scenarios aim an abuser at it to measure what merely receiving and answering that traffic costs on
this machine, next to what Keel's refusals cost.

Deliberately imports nothing from keel. Run: `uvicorn bench.refusal_floor_app:app --loop uvloop
--http httptools --no-access-log --no-proxy-headers`.
"""

from __future__ import annotations

from typing import Any

_BODY = (
    b'{"type":"urn:keel:problem:quota-exceeded","title":"Quota exceeded","status":429,'
    b'"detail":"Request quota exceeded (burst); retry after 1 s.",'
    b'"request_id":"0123456789abcdef0123456789abcdef","violated_policies":["burst"]}'
)
_HEADERS = [
    (b"content-type", b"application/problem+json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"ratelimit-policy", b'"burst";q=10;w=1, "concurrency";q=20;qu="concurrent-requests"'),
    (b"ratelimit", b'"burst";r=0;t=1'),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
]
_HEALTHY = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": _HEALTHY})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 429, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
