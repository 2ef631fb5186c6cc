"""Steady traffic for experiments, every request recorded with when it ran and how it ended.

Profiles are of two kinds: "cached" ones were read before the experiment (each Keel process
holds a copy), "uncached" ones never were, and each is read at most once. Writes are merge
patches setting one attribute to a new value each time.
A paced, closed loop per client: a fault slows the clients down rather than piling up
requests, as a real client with a timeout would.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx
from testkit.workload import is_stale

OPS = ("read_cached", "read_uncached", "write")


@dataclass(frozen=True, slots=True)
class Sample:
    op: str
    started: float  # monotonic seconds
    seconds: float
    status: int  # 0: no HTTP answer (timeout, connection refused or reset)
    stale: bool = False
    problem: str = ""  # the problem type's last part, for failures: "unavailable", "shed", ...
    retry_after: bool = False  # whether the answer carried a Retry-After header

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Traffic:
    base_url: str
    token: str
    cached_ids: list[str]
    uncached_ids: list[str]
    mix: dict[str, float]
    clients: int = 4
    pause_seconds: float = 0.02
    timeout_seconds: float = 5.0
    seed: int = 0
    samples: list[Sample] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _writes: int = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=self.timeout_seconds,
            limits=httpx.Limits(max_connections=self.clients * 2),
        ) as client:
            await asyncio.gather(*(self._client(client, n) for n in range(self.clients)))

    def stop(self) -> None:
        self._stopping.set()

    async def _client(self, client: httpx.AsyncClient, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)  # noqa: S311 - repeatable traffic, not security
        ops = list(self.mix)
        weights = [self.mix[op] for op in ops]
        while not self._stopping.is_set():
            op = rng.choices(ops, weights)[0]
            if op == "read_uncached" and not self.uncached_ids:
                op = "read_cached"
            await self._one(client, op, rng)
            await asyncio.sleep(self.pause_seconds)

    async def _one(self, client: httpx.AsyncClient, op: str, rng: random.Random) -> None:
        if op == "write":
            self._writes += 1
            request = client.build_request(
                "PATCH",
                f"/v1/profiles/{rng.choice(self.cached_ids)}",
                json={"attributes": {"chaos_write": self._writes}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        else:
            profile_id = self.uncached_ids.pop() if op == "read_uncached" else rng.choice(self.cached_ids)
            request = client.build_request("GET", f"/v1/profiles/{profile_id}")
        started = time.monotonic()
        try:
            response = await client.send(request)
        except httpx.HTTPError:
            self.samples.append(Sample(op, started, time.monotonic() - started, 0))
            return
        problem = ""
        if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
            "application/problem+json"
        ):
            problem = str(response.json().get("type", "")).rpartition(":")[2]
        self.samples.append(
            Sample(
                op,
                started,
                time.monotonic() - started,
                response.status_code,
                is_stale(response.headers),
                problem,
                "retry-after" in response.headers,
            )
        )


async def warm(base_url: str, token: str, ids: list[str]) -> None:
    """Read each profile once, so that Keel holds a copy."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
    ) as client:
        for profile_id in ids:
            response = await client.get(f"/v1/profiles/{profile_id}")
            response.raise_for_status()
