"""Host names to addresses through the event loop's resolver (the system's), bounded in time."""

from __future__ import annotations

import asyncio
import socket


class SystemResolver:
    def __init__(self, timeout_seconds: float = 5.0) -> None:
        self._timeout = timeout_seconds

    async def addresses(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise OSError(f"resolving {host!r} timed out") from None
        except (UnicodeError, ValueError) as error:
            # A name the resolver cannot even encode (IDNA): it resolves to nothing.
            raise OSError(f"{host!r} is not a resolvable name") from error
        return list(dict.fromkeys(str(info[4][0]) for info in infos))  # the resolver's order: its preference
