"""Webhook requests: one connection pool per process, no redirects (a redirect could lead to an
address the target check refused), the whole attempt bounded by its timeout, the answer's body
never read (only its status counts).

Where a request goes is checked as its connection is made. The pool's network backend
(`CheckedNetwork`) resolves the host once, refuses the connection unless every address is
public (unless private targets are allowed), and connects to the addresses it checked: nothing
resolves the name again between the check and the connection, so a name that moves to an
internal address a moment after a check (DNS rebinding) cannot take a delivery there. TLS still
checks the certificate against the name. The pool is httpcore's, httpx's own transport, used
through its public API because httpx takes no network backend; URLs are parsed by httpx, so
the host checked is the one httpx would connect to (IDNA 2008)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

import httpcore
import httpx

from keel import __version__
from keel.service.webhook_ports import AddressResolver, SendResult
from keel.service.webhook_targets import first_refused, target_addresses

USER_AGENT = f"Keel-Webhooks/{__version__}"
# httpcore's socket option shape (`httpcore._backends.base.SOCKET_OPTION`, not exported).
SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


def client_host(url: str) -> str | None:
    """The host this sender connects to for `url` (IDNA 2008, ASCII); None when httpx refuses
    the URL, or could not send to it (`http://\u2603.net/` passes Python's IDNA 2003 codec, not
    httpx's IDNA 2008)."""
    try:
        parsed = httpx.URL(url)
        # Decoded too: a request decodes it (`http://xn--n3h.net/` parses, then fails there).
        _ = parsed.host
        return parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):  # idna's errors are UnicodeErrors
        return None


class RefusedAddress(httpcore.ConnectError):
    """The host is or resolves to an address webhooks may not reach."""


class CheckedNetwork(httpcore.AsyncNetworkBackend):
    """Connections only to addresses checked as they are made (see the module's docstring)."""

    def __init__(
        self,
        resolver: AddressResolver,
        *,
        allow_private: bool,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await target_addresses(host, self._resolver)
        except OSError as error:
            raise httpcore.ConnectError(f"{host!r} does not resolve") from error
        if not self._allow_private and first_refused(addresses) is not None:
            raise RefusedAddress(f"{host!r} reaches a non-public address")
        failure: Exception = httpcore.ConnectError(f"{host!r} resolves to no address")
        # Each address in the resolver's order, families alternating, with a share of the time
        # each: one that never answers (IPv6 without a route) must not use up the attempt.
        ordered = interleaved(addresses)
        each = None if timeout is None else timeout / len(ordered) if ordered else timeout
        for address in ordered:
            try:
                return await self._inner.connect_tcp(address, port, each, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error  # the next address, as a client tries each one
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def interleaved(addresses: list[str]) -> list[str]:
    """`addresses` in their order, but IPv6 and IPv4 alternating from the first one's family
    (RFC 8305's address ordering, without its staggered start)."""
    v6 = [a for a in addresses if ":" in a]
    v4 = [a for a in addresses if ":" not in a]
    first, second = (v6, v4) if addresses and ":" in addresses[0] else (v4, v6)
    return [a for pair in itertools.zip_longest(first, second) for a in pair if a is not None]


class HttpWebhookSender:
    def __init__(self, resolver: AddressResolver, *, allow_private: bool, max_connections: int = 100) -> None:
        # No proxy from the environment: an HTTP(S)_PROXY meant for something else must not
        # reroute deliveries (the pool connects only where CheckedNetwork allows).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # one context, certifi's roots, as httpx had
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,  # as httpx's default: idle connections do not stay open
            network_backend=CheckedNetwork(resolver, allow_private=allow_private),
        )

    async def send(
        self, url: str, headers: dict[str, str], body: bytes, timeout_seconds: float
    ) -> SendResult:
        if client_host(url) is None:
            return SendResult(None, "invalid_url")
        parsed = httpx.URL(url)
        target = httpcore.URL(
            scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
        )
        # Host from the URL's own authority: an IPv6 literal keeps its brackets (httpcore would
        # write the bare address).
        sent = [
            (b"host", parsed.netloc),
            (b"user-agent", USER_AGENT.encode()),
            *((k.encode(), v.encode()) for k, v in headers.items()),
        ]
        limits = {
            "connect": timeout_seconds,
            "read": timeout_seconds,
            "write": timeout_seconds,
            "pool": timeout_seconds,
        }
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self._pool.stream(
                    "POST", target, headers=sent, content=body, extensions={"timeout": limits}
                ) as response:
                    return SendResult(response.status, None)
        except RefusedAddress:
            return SendResult(None, "refused_address")
        except (TimeoutError, httpcore.TimeoutException):
            return SendResult(None, "timeout")
        except httpcore.LocalProtocolError:
            return SendResult(None, "error")  # ours: a request we could not write
        except (httpcore.NetworkError, httpcore.ProtocolError, OSError):
            return SendResult(None, "connection")
        except (httpcore.UnsupportedProtocol, UnicodeError, ValueError):
            return SendResult(None, "invalid_url")
        except Exception:  # noqa: BLE001 - a failed attempt, recorded; never one that vanishes
            return SendResult(None, "error")

    def host_of(self, url: str) -> str | None:
        return client_host(url)

    async def close(self) -> None:
        await self._pool.aclose()
