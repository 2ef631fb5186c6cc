"""Friendly client: a client that honours RateLimit and Retry-After."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from testkit.loadgen import (
    Connection,
    auth_headers,
)

from bench.ratelimit.shared import (
    LIST_LIMIT,
    Environment,
    Report,
    flush_limits,
    keel_nodes,
)


def _parse_list(value: str) -> list[tuple[str, dict[str, float]]]:
    import http_sf

    parsed: list[tuple[str, dict[str, float]]] = http_sf.parse(value.encode(), tltype="list")  # type: ignore[assignment]
    return parsed


def friendly(environment: Environment, duration: float) -> Report:
    """Reads (cost 1) and lists (cost 10) alternating 9:1, as fast as the headers allow."""
    report = Report("friendly")
    token = environment.keys("friendly", 1)[0]
    costs = {"read": 1, "list": 10}
    with keel_nodes(environment, 2, "friendly") as ports:
        flush_limits(environment)

        async def client() -> dict[str, Any]:
            connections = [await Connection.open(port) for port in ports]
            headers = auth_headers(token)
            statuses: list[int] = []
            units = 0
            wait_total = 0.0
            n = 0
            deadline = time.perf_counter() + duration
            while time.perf_counter() < deadline:
                kind = "list" if n % 10 == 9 else "read"
                path = (
                    f"/v1/profiles?limit={LIST_LIMIT}"
                    if kind == "list"
                    else f"/v1/profiles/{random.choice(environment.ids)}"
                )
                response = await connections[n % len(connections)].request("GET", path, headers)
                n += 1
                statuses.append(response.status)
                wait = 0.0
                if response.status == 429:
                    wait = float(response.headers.get("retry-after", "1"))
                else:
                    units += costs[kind]
                    policies = {
                        name: params for name, params in _parse_list(response.headers["ratelimit-policy"])
                    }
                    [(name, state)] = _parse_list(response.headers["ratelimit"])
                    next_cost = costs["list" if n % 10 == 9 else "read"]
                    if state["r"] < next_cost:
                        # Units come back at q/w per second; wait for the missing ones.
                        interval = policies[name]["w"] / policies[name]["q"]
                        wait = (next_cost - state["r"]) * interval
                if wait:
                    wait_total += wait
                    await asyncio.sleep(wait)
            for connection in connections:
                connection.close()
            return {"requests": len(statuses), "statuses": statuses, "units": units, "waited_s": wait_total}

        outcome = asyncio.run(client())
    statuses = outcome["statuses"]
    sustained = 300 / 60
    units_per_s = outcome["units"] / duration
    # Over the run, GCRA admits at most quota x duration + burst (the minute policy binds).
    ceiling = (sustained * duration + 60) / duration
    report.figures = {
        "requests": outcome["requests"],
        "rejected_429": statuses.count(429),
        "other_statuses": sorted(set(statuses) - {200, 429}),
        "units_per_s": round(units_per_s, 2),
        "ceiling_units_per_s": round(ceiling, 2),
        "seconds_spent_waiting": round(outcome["waited_s"], 1),
    }
    report.check("zero 429s", statuses.count(429) == 0, f"{statuses.count(429)} of {len(statuses)}")
    report.check(
        "and still uses its quota (>= 90% of what the policies allow)",
        units_per_s >= 0.9 * ceiling,
        f"{units_per_s:.2f} units/s of {ceiling:.2f}",
    )
    return report
