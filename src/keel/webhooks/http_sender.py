"""Webhook requests over httpx: one client (connection pool) per process, no redirects (a
redirect could lead to an address the target check refused), the whole attempt bounded by its
timeout, the answer's body never read (only its status counts)."""

from __future__ import annotations

import asyncio

import httpx

from keel import __version__
from keel.service.webhook_ports import SendResult

USER_AGENT = f"Keel-Webhooks/{__version__}"


def client_host(url: str) -> str | None:
    """The host httpx connects to for `url` (IDNA 2008, ASCII); None when httpx refuses the
    URL, or could not send to it (`http://\u2603.net/` passes Python's IDNA 2003 codec, not
    httpx's IDNA 2008)."""
    try:
        parsed = httpx.URL(url)
        # Decoded too: a request decodes it (`http://xn--n3h.net/` parses, then fails there).
        _ = parsed.host
        return parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):  # idna's errors are UnicodeErrors
        return None


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
        except (httpx.InvalidURL, UnicodeError):
            return SendResult(None, "invalid_url")
        except Exception:  # noqa: BLE001 - a failed attempt, recorded; never one that vanishes
            return SendResult(None, "error")

    def host_of(self, url: str) -> str | None:
        return client_host(url)

    async def close(self) -> None:
        await self._client.aclose()
