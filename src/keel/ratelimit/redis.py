"""The shared limiter on Redis: one Lua script per decision, so that checking and charging every
policy of a request is one atomic step, on the Redis server's clock (`TIME`), whichever Keel
process asks.

Keys are `keel:rl:{<client>}:<policy>`: the hash tag keeps a client's policies on one Redis
Cluster slot, as a multi-key script needs. Every key written gets a TTL equal to the time its
TAT stays in the future, so an idle client leaves nothing behind. The kill switch is a key
(`keel ratelimit off` sets it) that each process re-reads every second, so it takes effect
fleet-wide within a second and without a restart.

Timeouts are short and there are no client-side retries: the caller (`FailOpenRateLimiter`)
decides what happens when Redis does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keel.ratelimit.gcra import Decision, describe
from keel.ratelimit.policy import MICROSECONDS, RESERVED_POLICY_NAME, Plan
from keel.ratelimit.ports import LimiterUnavailable
from keel.resilience.loop_lag import LoopLag

KILL_SWITCH_KEY = "keel:rl:switch"
T = TypeVar("T")
# However far behind this process is, a decision never waits longer than this for Redis (plus,
# once a second, the kill switch's read, which waits the plain deadline).
_LONGEST_WAIT_SECONDS = 1.0
# How Redis failing shows: the driver's errors, the socket's, our deadline, and uvloop's
# RuntimeError when the driver writes to a connection a killed Redis has closed under it
# (found by chaos experiment 06: it was a 500).
_REDIS_FAILURES = (RedisError, OSError, TimeoutError, RuntimeError)

# How often each process re-reads the kill switch.
_SWITCH_REFRESH_SECONDS = 1.0


def _now_from(argument: int) -> str:
    """Lua that sets `now` (µs): ARGV[argument], or the Redis server's TIME when that is ''."""
    return f"""local now
if ARGV[{argument}] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[{argument}])
end
"""


# ARGV: mode ("acquire" | "refund"), cost, now (µs, or '' for the server's TIME: only tests
# pass a clock, to decide deterministically), slot (a name unique to the request, or '' to take
# none), cap (the client's concurrency slots), lease (µs), then per policy: emission interval
# (µs), tolerance (µs), shadow (0 | 1). KEYS: one per policy, then, with a slot, the client's
# slots (a sorted set: name -> the end of its lease), all of one client (one hash tag, one
# Cluster slot). Returns {now_us, slot, verdict_1, tat_1, verdict_2, tat_2, ...}: slot 1 taken,
# 0 refused by the cap (then nothing is decided or charged, and no verdicts follow), -1 not
# asked or not admitted; tat -1 = none stored. A refund leaves shadow policies alone.
# The cap is counted after dropping the slots whose lease has ended (a process killed with
# requests in flight never gives them back).
# Integer microseconds throughout, as in `gcra`: Lua's numbers are doubles, but TIME gives
# whole seconds and microseconds, and epoch microseconds (~1.8e15) plus integer intervals stay
# far below 2**53, so every sum is exact. TATs are stored with '%d' and returned as numbers
# (Redis replies with integers). `math.floor` on read: a TAT stored as a decimal by an older
# version ('%.3f') is taken as the whole microsecond below it.
GCRA_SCRIPT = (
    """
local n = (#ARGV - 6) / 3
"""
    + _now_from(3)
    + """local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local slot = ARGV[4]
local slots = KEYS[n + 1]
if mode == 'acquire' and slot ~= '' then
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if redis.call('ZCARD', slots) >= tonumber(ARGV[5]) then return {now, 0} end
end
local result = {now, -1}
local tats = {}
local verdicts = {}
local admit = true
for i = 1, n do
  local interval = tonumber(ARGV[3 * i + 4])
  local tolerance = tonumber(ARGV[3 * i + 5])
  local shadow = ARGV[3 * i + 6] == '1'
  local stored = redis.call('GET', KEYS[i])
  local tat = stored and math.floor(tonumber(stored)) or nil
  tats[i] = tat
  if mode == 'refund' then
    if tat and not shadow then
      local back = tat - cost * interval
      if back > now then
        redis.call('SET', KEYS[i], string.format('%d', back), 'PX', math.ceil((back - now) / 1000) + 1)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  else
    local debt = (tat and tat > now) and (tat - now) or 0
    verdicts[i] = debt + cost * interval <= tolerance
    if not verdicts[i] and not shadow then admit = false end
  end
end
if mode == 'refund' then return result end
for i = 1, n do
  local tat = tats[i]
  if admit and verdicts[i] then
    local interval = tonumber(ARGV[3 * i + 4])
    local start = (tat and tat > now) and tat or now
    tat = start + cost * interval
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  result[#result + 1] = verdicts[i] and 1 or 0
  result[#result + 1] = tat or -1
end
if admit and slot ~= '' then
  local lease = tonumber(ARGV[6])
  redis.call('ZADD', slots, now + lease, slot)
  local ttl = math.ceil(lease / 1000) + 1
  if redis.call('PTTL', slots) < ttl then redis.call('PEXPIRE', slots, ttl) end
  result[2] = 1
end
return result
"""
)


async def _remove_slots(client: Redis, batch: list[tuple[str, str, asyncio.Future[None]]]) -> object:
    """One release as one command; several as one pipeline (redis-py's pipeline costs more than
    a command: `bench.concurrency_cap` at concurrency 1 measured it)."""
    if len(batch) == 1:
        [(key, slot, _)] = batch
        return await client.zrem(key, slot)
    pipeline = client.pipeline(transaction=False)
    for key, slot, _ in batch:
        pipeline.zrem(key, slot)
    return await pipeline.execute()


# KEYS: the client's slots. ARGV: the slot, now (µs, or '' for the server's TIME), lease (µs).
# Moves the end of a held slot's lease to now + lease; a slot no longer there (given back, or
# dropped after its lease ended) is not taken again. The set's TTL is only ever lengthened, so a
# process with a shorter lease never cuts another's slots short (Redis 6 has no PEXPIRE GT).
RENEW_SCRIPT = (
    _now_from(2)
    + """local lease = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
local ttl = math.ceil(lease / 1000) + 1
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
)


def _resolve(waiting: list[tuple[str, str, asyncio.Future[None]]]) -> None:
    for *_, done in waiting:
        if not done.done():  # a caller cancelled while waiting has cancelled its own
            done.set_result(None)


def policy_key(client: str, policy_name: str) -> str:
    return f"keel:rl:{{{client}}}:{policy_name}"


def slots_key(client: str) -> str:
    """The client's concurrency slots: under the reserved policy name, so no policy's key."""
    return policy_key(client, RESERVED_POLICY_NAME)


def connect(url: str, *, max_connections: int = 128) -> Redis:
    """A client with no retries for the decision path, but one on a closed connection. Its own
    timeouts are long stops only: the short deadline is `RedisRateLimiter`'s, which knows
    whether it is Redis or this process that is late (a burst of requests also makes connecting
    look slow)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=_LONGEST_WAIT_SECONDS,
        socket_timeout=_LONGEST_WAIT_SECONDS,
        socket_connect_timeout=_LONGEST_WAIT_SECONDS,
        # One retry, on a connection error only: a pooled connection that a restarted Redis
        # closed fails at once on first use, and is replaced by a new one for the same call
        # (found by chaos experiment 06: after a restart, stale connections failing one by one
        # kept reopening the breaker, and a full-length run answered 12 % 429s from the local
        # share after Redis was back). Never on a timeout: the deadline is ours. A command cut
        # off after Redis ran it is charged twice; rare, and a rate limit's cost, not data.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


class RedisRateLimiter:
    def __init__(
        self,
        client: Redis,
        *,
        timeout_seconds: float,
        loop_lag: LoopLag | None = None,
        clock_us: Callable[[], int] | None = None,
        tracer: Tracer | None = None,
        slot_lease_seconds: float = 30.0,
    ) -> None:
        # No clock: the Redis server's TIME, one clock for the whole fleet (production). A
        # clock: the script decides at the time it gives, so tests need not race the wall clock.
        self._clock_us = clock_us
        self._client = client
        self._timeout = timeout_seconds
        self._loop_lag = loop_lag
        self._script = client.register_script(GCRA_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        # A client span per decision where the request is traced (OpenTelemetry's database
        # conventions; Redis is `db.system.name` "redis").
        self._tracer = tracer
        pool = getattr(client, "connection_pool", None)  # a stand-in client (tests) may have none
        where = pool.connection_kwargs if pool is not None else {}
        self._span_attributes: dict[str, str | int] = {
            "db.system.name": "redis",
            "db.system": "redis",
            "db.operation.name": "EVALSHA",
        }
        if isinstance(where.get("host"), str):
            self._span_attributes["server.address"] = where["host"]
        if isinstance(where.get("port"), int):
            self._span_attributes["server.port"] = where["port"]
        self._switched_off = False
        self._switch_read_until = 0.0
        # The task whose switch read Redis left unanswered, and when (loop time): `_read_switch`.
        self._switch_unanswered: tuple[asyncio.Task[object] | None, float] | None = None
        self._args: dict[tuple[str, int], list[str | int | float]] = {}
        # How long a concurrency slot outlives a process that never gave it back: longer than
        # any request may run (the composition root derives it from the request deadline).
        self._slot_lease_us = round(slot_lease_seconds * MICROSECONDS)
        self._releases: set[asyncio.Task[object]] = set()
        # Slots to give back, and whether a pipeline of them is on its way (`release_slot`).
        self._to_release: list[tuple[str, str, asyncio.Future[None]]] = []
        self._releasing = False
        # The slots this process holds (slot -> client), renewed every third of the lease while
        # held, so that a request that outlives the lease (a body sent slowly) keeps its slot;
        # a process killed stops renewing, and its slots end with their lease.
        self._held: dict[str, str] = {}
        self._renewing: asyncio.Task[None] | None = None

    async def switched_off(self) -> bool:
        """The fleet-wide kill switch, re-read at most once a second."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._switch_read_until:
            await self._read_switch(loop.time())
        return self._switched_off

    def switched_off_seen(self) -> bool | None:
        if asyncio.get_running_loop().time() >= self._switch_read_until:
            return None
        return self._switched_off

    async def acquire(self, client: str, plan: Plan, cost: int, slot: str | None = None) -> Decision:
        if await self.switched_off():
            count = len(plan.policies)
            return describe([True] * count, [None] * count, 0, plan.policies, cost)
        if self._switch_just_unanswered():  # nothing sent: no slot to give back
            raise LimiterUnavailable("kill switch read unanswered")
        try:
            reply = await self._run("acquire", client, plan, cost, slot)
        except BaseException:
            # Redis may have run the script (a reply cut off by the deadline, a cancellation):
            # a slot taken there must not wait out its lease.
            if slot is not None:
                self._release_later(client, slot)
            raise
        now = int(reply[0])
        taken = int(reply[1])
        if taken == 0:
            return Decision(allowed=False, cost=cost, states=(), over_cap=True)
        verdicts = [bool(int(v)) for v in reply[2::2]]
        stored: list[int | None] = [None if int(t) < 0 else int(t) for t in reply[3::2]]
        decision = describe(verdicts, stored, now, plan.policies, cost)
        if taken != 1 or slot is None:
            return decision
        self._held[slot] = client
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew_forever())
        return dataclasses.replace(decision, slot_held=True)

    async def release_slot(self, client: str, slot: str) -> None:
        """Within the deadline; a release Redis does not take is left to the lease.

        Group commit: the releases asked for while one pipeline of them is on its way to Redis
        go together in the next (each caller still waits for its own to be done), so that under
        load a release costs a fraction of a round trip. `bench.concurrency_cap` measures it."""
        self._held.pop(slot, None)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._to_release.append((slots_key(client), slot, done))
        if not self._releasing:
            self._releasing = True
            task = loop.create_task(self._send_releases())
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        await done

    async def _send_releases(self) -> None:
        batch: list[tuple[str, str, asyncio.Future[None]]] = []
        try:
            while self._to_release:
                batch, self._to_release = self._to_release, []
                with contextlib.suppress(LimiterUnavailable):
                    await self._within_deadline(_remove_slots(self._client, batch), extend=False)
                _resolve(batch)
                batch = []
        finally:  # cancelled (the loop closing): nobody waits on; the leases end what is left
            self._releasing = False
            _resolve(batch)
            _resolve(self._to_release)
            self._to_release = []

    async def renew_held_slots(self) -> None:
        """Move the lease of every slot this process holds (one pipeline); what Redis does not
        take is tried again at the next renewal."""
        if not self._held:
            return
        pipeline = self._client.pipeline(transaction=False)
        now = "" if self._clock_us is None else self._clock_us()
        for slot, client in list(self._held.items()):
            await self._renew(
                keys=[slots_key(client)], args=[slot, now, self._slot_lease_us], client=pipeline
            )
        with contextlib.suppress(LimiterUnavailable):
            await self._within_deadline(pipeline.execute(), extend=False)

    async def _renew_forever(self) -> None:
        interval = self._slot_lease_us / MICROSECONDS / 3
        while self._held:
            await asyncio.sleep(interval)
            await self.renew_held_slots()

    def _release_later(self, client: str, slot: str) -> None:
        """`release_slot` in the background: for a decision that failed or was cancelled, whose
        slot Redis may or may not have taken."""
        task = asyncio.get_running_loop().create_task(self.release_slot(client, slot))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _read_switch(self, now: float) -> None:
        # A separate key, read once a second: inside the script it would be a second Cluster
        # slot. If Redis does not answer, the last known state stays. The read waits the plain
        # deadline only; and when Redis, not this process's loop, is the one late, the decision
        # of the request that read it (its task, right after) fails at once instead of waiting
        # out a second deadline: chaos experiment 06 found that request waiting two as Redis was
        # blackholed.
        loop = asyncio.get_running_loop()
        self._switch_read_until = now + _SWITCH_REFRESH_SECONDS
        self._switch_unanswered = None
        try:
            async with asyncio.timeout(self._timeout):
                self._switched_off = await self._client.get(KILL_SWITCH_KEY) == b"off"
        except _REDIS_FAILURES:
            behind = self._loop_lag is not None and self._loop_lag.behind(self._timeout / 2)
            if not behind:
                self._switch_unanswered = (asyncio.current_task(), loop.time())

    def _switch_just_unanswered(self) -> bool:
        """Whether this task's own switch read went unanswered just now (see `_read_switch`)."""
        if self._switch_unanswered is None:
            return False
        task, at = self._switch_unanswered
        if task is not asyncio.current_task():
            return False
        self._switch_unanswered = None
        return asyncio.get_running_loop().time() - at <= self._timeout

    async def refund(self, client: str, plan: Plan, cost: int) -> None:
        if self._switch_just_unanswered():
            raise LimiterUnavailable("kill switch read unanswered")
        await self._run("refund", client, plan, cost, None)

    async def _run(
        self, mode: str, client: str, plan: Plan, cost: int, slot: str | None
    ) -> list[bytes | int]:
        keys = [policy_key(client, p.name) for p in plan.policies]
        if slot is not None:
            keys.append(slots_key(client))
        span = self._span()
        try:
            reply: list[bytes | int] = await self._within_deadline(
                self._script(keys=keys, args=self._arguments(mode, plan, cost, slot))
            )
        except LimiterUnavailable as error:
            span.set_status(Status(StatusCode.ERROR, str(error)))
            raise
        finally:
            span.end()
        return reply

    def _span(self) -> Span:
        """A client span for one script call, or the no-op span where the request is not traced
        (most are not: sampling) or no tracer was given."""
        if self._tracer is None or not trace.get_current_span().is_recording():
            return trace.INVALID_SPAN
        return self._tracer.start_span("EVALSHA", kind=SpanKind.CLIENT, attributes=self._span_attributes)

    async def _within_deadline(self, call: Awaitable[T], *, extend: bool = True) -> T:
        """`call`'s result, or LimiterUnavailable when Redis fails or is late by the deadline.
        `extend` False: the plain deadline, even while this process is behind (a release or a
        renewal, which an answer or nobody waits for, and which the lease makes safe to lose)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(None) as deadline:

                def on_late() -> None:
                    # If this process's own event loop is behind (a burst of requests), the reply
                    # may well be waiting in the socket: that is not Redis failing, and falling
                    # back now would admit requests Redis would refuse. Wait on, up to a limit.
                    late_by = loop.time() - started
                    behind = self._loop_lag is not None and self._loop_lag.behind(self._timeout / 2)
                    if extend and behind and late_by < _LONGEST_WAIT_SECONDS:
                        timer[0] = loop.call_later(self._timeout, on_late)
                        return
                    deadline.reschedule(loop.time())

                timer = [loop.call_later(self._timeout, on_late)]
                try:
                    return await call
                finally:
                    timer[0].cancel()
        except _REDIS_FAILURES as error:
            raise LimiterUnavailable(type(error).__name__) from error

    def _arguments(self, mode: str, plan: Plan, cost: int, slot: str | None) -> list[str | int | float]:
        policy_args = self._args.get((plan.name, id(plan)))
        if policy_args is None:
            policy_args = []
            for p in plan.policies:
                policy_args += [p.emission_interval_us, p.tolerance_us, int(p.shadow)]
            self._args[(plan.name, id(plan))] = policy_args
        now = "" if self._clock_us is None else self._clock_us()
        return [mode, cost, now, slot or "", plan.concurrency, self._slot_lease_us, *policy_args]

    async def set_switch(self, enabled: bool) -> None:
        """The fleet-wide kill switch: off admits everything (headers still describe the plans)."""
        if enabled:
            await self._client.delete(KILL_SWITCH_KEY)
        else:
            await self._client.set(KILL_SWITCH_KEY, "off")
        self._switched_off = not enabled

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if self._releases:  # each within its deadline: given back before the connections go
            await asyncio.gather(*self._releases, return_exceptions=True)
        await self._client.aclose()
