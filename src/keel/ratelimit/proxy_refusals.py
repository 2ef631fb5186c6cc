"""Refusals passed on to HAProxy, so that an abusive client's flood stops at the proxy
(docs/fleet.md#abusive-clients-refused-at-the-proxy).

When Keel's limiter refuses an API key, Keel knows how long no request of that key can conform:
the wait for one unit, the cheapest a request costs (`Decision.wait_for_one_unit_us`). This writes
the moment that wait ends into a stick table of each HAProxy in front, through its runtime API
(`set table <table> key <key id> data.gpt0 <deadline>`); the deployed configuration
(deploy/haproxy/haproxy.cfg) answers a request whose key id has a deadline still ahead with its
own 429 and a `Retry-After` of the seconds left, without passing it to a node. The decision stays
Keel's (GCRA on Redis); the proxy only enforces it, and never for longer than Keel would:

- the deadline is in unix milliseconds, rounded down, so the proxy lets go within the
  millisecond Keel would admit again (a second's granularity would hold nothing for a quota of
  ten a second, whose waits are a tenth of one);
- the wait is for the cheapest request, so no request is refused at the proxy that Keel would
  admit, whatever it costs;
- only refusals Keel's limiter decided for the fleet are passed on: not the concurrency cap (a
  slot frees when one of the client's requests ends), not the decisions a process takes alone
  while Redis is down (its own share of the plan), not an edge's quota spent on its callers'
  behalf (the caller's side: keel.admission).

A stick table's counters hold 32 bits, and unix milliseconds need more: the table holds the
deadline's low 32 bits, and HAProxy takes the milliseconds left modulo 2^32 (`and(4294967295)`),
counting only what lies in (0, `MAX_HOLD_MS`]. A deadline is never set further ahead than that
(longer waits are held for an hour, then Keel refuses the rest itself), entries expire an hour
after their last write, so a stale one can never wrap around into the window, and a deadline
whose low 32 bits are 0 (HAProxy's answer for a key not in the table) is not sent.

Nothing here blocks a request: refusals wait in a bounded set (the latest deadline per key),
and a task sends them in batches, one connection per proxy and batch, to every proxy at once.
Every refusal that reaches Keel is sent again, so a proxy that restarted, lost a batch or let an
entry expire learns the key at its next refused request (while a proxy holds a key, its requests
do not reach Keel, so this costs little). A proxy that does not answer loses that batch, which
is counted and logged: Keel still refuses those clients itself.

What makes a deadline too late is cleared at the proxy: a change of the key (its plan, scopes,
secret, expiry; from any process, through the key-change push), units given back after it was
sent (a 304, a shed request: `refunded`), and the kill switch thrown (`forgive_all`: the table
emptied). A clear is owed to each proxy until that one has taken it, and tried again every
`RETRY_S` (past `MAX_WAITING` owed keys, that proxy's whole table is owed instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter

from keel.observability.sampled_log import SampledLog

# Key ids are 16 lowercase base32 characters (keel.service.auth): nothing else reaches a command.
_KEY_ID = re.compile(r"[a-z2-7]{16}")
_TABLE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_HOLD_MS = 3_600_000  # the longest a deadline is set ahead (and the table's entries live)
_LOW_32 = 0xFFFFFFFF
MAX_WAITING = 10_000  # keys waiting to be sent; past it, new ones are dropped (and counted)
BATCH = 200  # commands per connection: well within HAProxy's 16 kB command line
SEND_TIMEOUT_S = 1.0
RETRY_S = 1.0  # between two tries of the clears a proxy missed
_PRUNE_AT = 50_000


def parse_address(address: str) -> tuple[str, int] | str:
    """`unix:/path` (a socket path) or `host:port` (`[v6]:port`): what `asyncio` connects to."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path:
            raise ValueError(f"no socket path in {address!r}")
        return path
    host, colon, port = address.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a runtime API address is unix:/path or host:port, not {address!r}")
    try:
        host.encode("idna")  # what connecting would do: refused now, not in the sender's task
    except UnicodeError:
        raise ValueError(f"a runtime API address is unix:/path or host:port, not {address!r}") from None
    return host, int(port)


def commands(table: str, deadlines: dict[str, int]) -> bytes:
    """One runtime API line setting each key's deadline (unix ms; its low 32 bits are written)."""
    return (
        ";".join(
            f"set table {table} key {key} data.gpt0 {until & _LOW_32}" for key, until in deadlines.items()
        )
        + "\n"
    ).encode()


def clearing(table: str, keys: Sequence[str] | None) -> bytes:
    """One runtime API line clearing each key's deadline; every entry when `keys` is None."""
    if keys is None:
        return f"clear table {table}\n".encode()
    return (";".join(f"clear table {table} key {key}" for key in keys) + "\n").encode()


class HaproxyRefusals:
    """A `RefusalPublisher` onto the stick table `table` of the HAProxy runtime APIs at `addresses`."""

    def __init__(
        self,
        addresses: Sequence[str],
        table: str,
        counter: Counter,
        *,
        wall_clock: Callable[[], float] = time.time,
        retry_s: float = RETRY_S,
    ) -> None:
        if not _TABLE.fullmatch(table):
            raise ValueError(f"not a stick table's name: {table!r}")
        self._addresses = [parse_address(a) for a in addresses]
        self._names = list(addresses)
        self._table = table
        self._wall = wall_clock
        self._retry_s = retry_s
        self._waiting: dict[str, int] = {}
        self._sending: set[str] = set()  # keys of the batch of deadlines on its way
        # Deadlines some proxy took, still ahead or lately passed: what a refund may shorten.
        self._held: dict[str, int] = {}
        self._prune_at = _PRUNE_AT
        # Clears owed, per proxy: each is told until it has taken its own.
        self._owed: list[set[str]] = [set() for _ in self._addresses]
        self._owed_all = [False for _ in self._addresses]
        self._wake = asyncio.Event()
        self._counts = {outcome: counter.labels(outcome) for outcome in ("sent", "failed", "dropped")}
        self._log = SampledLog("keel.ratelimit.proxy", interval_seconds=10.0)

    def refused(self, key_id: str, wait_us: int) -> None:
        if not _KEY_ID.fullmatch(key_id):
            return
        now_ms = int(self._wall() * 1000)
        until = now_ms + min(wait_us // 1000, MAX_HOLD_MS)  # rounded down: never past Keel's wait
        if until <= now_ms or until & _LOW_32 == 0:
            return  # under a millisecond; or a deadline HAProxy would read as no entry
        if until <= self._waiting.get(key_id, 0):
            return  # a later deadline for the key is already waiting
        if key_id not in self._waiting and len(self._waiting) >= MAX_WAITING:
            self._counts["dropped"].inc()
            return
        self._waiting[key_id] = until
        self._wake.set()

    def forgive(self, key_id: str) -> None:
        """Key `key_id` changed (its plan, a rotation, a revocation): its deadline at the proxy
        is cleared, so that the new terms are Keel's to apply from its next request."""
        if not _KEY_ID.fullmatch(key_id):
            return
        self._waiting.pop(key_id, None)
        self._held.pop(key_id, None)
        for n, owed in enumerate(self._owed):
            if self._owed_all[n]:
                continue  # the whole table is owed to that one: this key with it
            if len(owed) >= MAX_WAITING:  # a proxy that has not answered for long: all of it
                owed.clear()
                self._owed_all[n] = True
            else:
                owed.add(key_id)
        self._wake.set()

    def refunded(self, key_id: str) -> None:
        """Units went back to key `key_id` (a 304, a shed request): a deadline for it, held
        ahead, on its way or waiting, may now be too late: it is withdrawn (Keel decides the
        key's next request). One another process wrote is not known here (docs/fleet.md)."""
        self._waiting.pop(key_id, None)  # not sent yet: dropped (Keel refuses on its own)
        until = self._held.get(key_id)
        if key_id in self._sending or (until is not None and until > int(self._wall() * 1000)):
            self.forgive(key_id)

    def forgive_all(self) -> None:
        """The rate limits were switched off: every deadline is cleared, none is sent."""
        self._waiting.clear()
        self._held.clear()
        for n, owed in enumerate(self._owed):
            owed.clear()
            self._owed_all[n] = True
        self._wake.set()

    def pending(self) -> bool:
        """Anything still to send: refusals waiting, or clears owed to a proxy that missed them."""
        return bool(self._waiting) or any(self._owed_all) or any(self._owed)

    async def flush(self) -> None:
        """Send what is waiting now (`run` does it as refusals come, and retries what is owed).

        Each proxy gets one line per batch: the clears owed to it, then the batch's deadlines,
        so a key cleared and refused again is cleared first. A proxy that does not take its
        line is owed its clears still (its deadlines are lost: the key's next refusal sends
        them again); the lines go to every proxy at once, so one that does not answer holds up
        no other."""
        while True:
            batch = dict(list(self._waiting.items())[:BATCH])
            for key in batch:
                del self._waiting[key]
            lines: dict[int, tuple[bool, list[str], bytes, int]] = {}
            for n, owed in enumerate(self._owed):
                everything, self._owed_all[n] = self._owed_all[n], False
                cleared = [owed.pop() for _ in range(min(BATCH, len(owed)))] if not everything else []
                if everything:
                    owed.clear()
                line = clearing(self._table, None) if everything else b""
                if cleared:
                    line += clearing(self._table, cleared)
                if batch:
                    line += commands(self._table, batch)
                if line:
                    count = int(everything) + len(cleared) + len(batch)  # commands, as counted
                    lines[n] = (everything, cleared, line.replace(b"\n", b";")[:-1] + b"\n", count)
            if not lines:
                return
            self._sending = set(batch)
            try:
                taken = await self._send([(n, line, count) for n, (_, _, line, count) in lines.items()])
            finally:
                self._sending = set()
            for (n, (everything, cleared, _, _)), ok in zip(lines.items(), taken, strict=True):
                if not ok:  # owed still
                    self._owed_all[n] = self._owed_all[n] or everything
                    if not self._owed_all[n]:
                        self._owed[n].update(cleared)
            if batch and any(taken):
                self._hold(batch)
            if not batch:
                return  # the clears owed were tried once; `run` tries again later

    async def run(self) -> None:
        """Send refusals as they come, until cancelled (the process's background work). While a
        proxy is owed clears it missed, they are tried again every `retry_s`, and a new refusal
        still goes at once."""
        while True:
            if self.pending():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._retry_s)
            else:
                await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as error:  # noqa: BLE001 - never the end of the task: the next batch is tried
                self._log.warning("proxy_refusals_failed", error=type(error).__name__)

    async def _send(self, lines: Sequence[tuple[int, bytes, int]]) -> list[bool]:
        """Each line to its proxy (index, line, commands in it), all at once; which took theirs."""
        return list(
            await asyncio.gather(
                *(self._send_one(self._names[n], self._addresses[n], line, count) for n, line, count in lines)
            )
        )

    async def _send_one(self, name: str, address: tuple[str, int] | str, line: bytes, count: int) -> bool:
        try:
            answer = await asyncio.wait_for(_exchange(address, line), SEND_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - unreachable, slow, refused: counted and logged
            self._counts["failed"].inc(count)
            self._log.warning("proxy_refusals_unsent", proxy=name, error=type(error).__name__)
            return False
        if answer.strip():  # the runtime API is silent on success
            self._counts["failed"].inc(count)
            self._log.warning("proxy_refusals_refused", proxy=name, answer=answer.strip()[:200])
            return False
        self._counts["sent"].inc(count)
        return True

    def _hold(self, batch: dict[str, int]) -> None:
        owed = set().union(*self._owed)
        for key, until in batch.items():
            if key not in owed:  # not forgiven while the batch was on its way
                self._held.pop(key, None)  # to the end: the oldest go first when pruned
                self._held[key] = until
        if len(self._held) >= self._prune_at:
            # Passed deadlines go; if that is not enough, the oldest quarter. The next prune
            # comes after as many new ones again, so the cost per deadline stays constant.
            now = int(self._wall() * 1000)
            self._held = {k: u for k, u in self._held.items() if u > now}
            if len(self._held) >= _PRUNE_AT:
                for key in list(self._held)[: len(self._held) // 4]:
                    del self._held[key]
            self._prune_at = len(self._held) + _PRUNE_AT // 2


async def _exchange(address: tuple[str, int] | str, line: bytes) -> str:
    """One non-interactive runtime API session: the commands, then everything answered until
    HAProxy closes the connection."""
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(line)
        await writer.drain()
        return (await reader.read()).decode(errors="replace")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
