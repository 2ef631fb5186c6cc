"""The connection the SQLite repositories talk to, and the shared reader's whole statements.

SQLite keeps a connection's read snapshot while any statement on it is unfinished (stepped but
not yet run to its end or reset). A node's reader is shared by every read-only unit of work:
with aiosqlite, a statement is stepped by one call on the connection's thread (`execute`) and
finished by later ones (`fetchone`, the cursor's close), and between those awaits another unit's
statement runs on the same connection, inside the first one's snapshot. That snapshot may be
older than a write a client has already been told of: the client's next read missed its own
write (a profile just created, not found). So every statement on the reader goes through
`WholeStatements`: read to its end in one call (aiosqlite's `execute_fetchall`), so none is
unfinished while another can start.

The writer needs none of this: a write unit of work holds it alone (the store's write lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Protocol

import aiosqlite


class Cursor(Protocol):
    """What the repositories read of a statement's cursor."""

    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> sqlite3.Row | None: ...

    async def fetchall(self) -> Iterable[sqlite3.Row]: ...


class Statement(Protocol):
    """`connection.execute(...)`: awaited for its cursor, or entered (`async with`)."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...

    async def __aenter__(self) -> Cursor: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...


class Connection(Protocol):
    """An aiosqlite connection (the writer), or the reader's `WholeStatements`."""

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Statement: ...

    def execute_fetchall(
        self, sql: str, parameters: Iterable[Any] | None = None
    ) -> Awaitable[Iterable[sqlite3.Row]]: ...

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Awaitable[Cursor]: ...


class Rows:
    """A statement's whole result, already read: nothing is left open on the connection."""

    def __init__(self, rows: Iterable[sqlite3.Row]) -> None:
        self._rows = list(rows)
        self._next = 0

    @property
    def rowcount(self) -> int:
        return -1  # what sqlite3 says of a SELECT: the reader runs nothing else

    async def fetchone(self) -> sqlite3.Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[sqlite3.Row]:
        rest, self._next = self._rows[self._next :], len(self._rows)
        return rest


class _WholeStatement:
    def __init__(self, result: Awaitable[Iterable[sqlite3.Row]]) -> None:
        self._result = result

    async def _rows(self) -> Rows:
        return Rows(await self._result)

    def __await__(self) -> Generator[Any, None, Rows]:
        return self._rows().__await__()

    async def __aenter__(self) -> Rows:
        return await self._rows()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class WholeStatements:
    """The shared reader: each statement read to its end in one call on its thread."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> _WholeStatement:
        return _WholeStatement(self._connection.execute_fetchall(sql, parameters))

    def execute_fetchall(
        self, sql: str, parameters: Iterable[Any] | None = None
    ) -> Awaitable[Iterable[sqlite3.Row]]:
        return self._connection.execute_fetchall(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Awaitable[Cursor]:
        raise sqlite3.ProgrammingError("The shared reader runs no statement for many rows: use a write unit.")

    async def set_trace_callback(self, handler: Callable[..., Any]) -> None:
        """Every statement's SQL to `handler` (None: no longer), as sqlite3's own: what tests
        that count the statements a request sends read."""
        await self._connection.set_trace_callback(handler)

    async def close(self) -> None:
        await self._connection.close()
