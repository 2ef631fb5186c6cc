"""Webhook requests over httpx: one client (connection pool) per process, no redirects (a
redirect could lead to an address the target check refused), the whole attempt bounded by its
timeout, the answer's body never read (only its status counts)."""

from __future__ import annotations

import asyncio

import httpx

from keel import __version__
from keel.service.webhook_ports import SendResult

USER_AGENT = f"Keel-Webhooks/{__version__}"


class HttpxWebhookSender:
    def __init__(self, *, max_connections: int = 100) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
            headers={"user-agent": USER_AGENT},
            trust_env=False,  # an HTTP(S)_PROXY meant for something else must not reroute deliveries
        )

    async def send(
        self, url: str, headers: dict[str, str], body: bytes, timeout_seconds: float
    ) -> SendResult:
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self._client.stream(
                    "POST", url, headers=headers, content=body, timeout=timeout_seconds
                ) as response:
                    return SendResult(response.status_code, None)
        except (TimeoutError, httpx.TimeoutException):
            return SendResult(None, "timeout")
        except httpx.HTTPError:
            return SendResult(None, "connection")

    async def close(self) -> None:
        await self._client.aclose()
