"""Limiter cost: in-memory and Redis limiter against no limiter (wrk, same run), and per decision
in process."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from typing import Any

from bench.harness import ensure_wrk, parse_wrk
from bench.ratelimit.shared import (
    REPO,
    RESULTS,
    Environment,
    Report,
    keel_nodes,
    refusal_floor,
)


def cost(environment: Environment, duration: float) -> Report:
    report = Report("cost")
    token = environment.keys("unlimited", 1)[0]
    wrk = ensure_wrk()
    ids_file = RESULTS / "ratelimit_ids.txt"
    ids_file.write_text("\n".join(environment.ids) + "\n")
    wrk_env = {**environment.base_env, "KEEL_BENCH_IDS": str(ids_file), "KEEL_BENCH_TOKEN": token}
    variants = {
        "no limiter": {"KEEL_RATELIMIT_ENABLED": "false"},
        "in-memory": {"KEEL_REDIS_URL": ""},
        "redis": {},
    }
    runs: dict[str, list[Any]] = {name: [] for name in variants}
    for round_number in range(2):
        order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
        for name in order:
            overrides = {"KEEL_LOAD_SHEDDING_ENABLED": "false", **variants[name]}
            with keel_nodes(environment, 1, f"cost-{name.replace(' ', '-')}", **overrides) as ports:
                command = [
                    wrk,
                    "-t1",
                    "-c32",
                    f"-d{duration:g}s",
                    "--latency",
                    "-s",
                    str(REPO / "bench" / "rest_read.lua"),
                ]
                subprocess.run(
                    [*command[:3], "-d3s", *command[4:], f"http://127.0.0.1:{ports[0]}"],
                    env=wrk_env,
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
                done = subprocess.run(
                    [*command, f"http://127.0.0.1:{ports[0]}"],
                    env=wrk_env,
                    capture_output=True,
                    text=True,
                    timeout=duration + 60,
                    check=True,
                )
            result = parse_wrk(name, done.stdout)
            runs[name].append(result)
            print(
                f"  round {round_number + 1} {name:<10} {result.requests_per_second:8,.0f} req/s"
                f"  p50 {result.p50_ms:5.2f} ms  p99 {result.p99_ms:6.2f} ms  non-2xx {result.non_2xx_3xx}",
                flush=True,
            )
    medians = {
        name: {
            "requests_per_second": statistics.median(r.requests_per_second for r in rs),
            "p50_ms": statistics.median(r.p50_ms for r in rs),
            "p99_ms": statistics.median(r.p99_ms for r in rs),
            "non_2xx": sum(r.non_2xx_3xx for r in rs),
        }
        for name, rs in runs.items()
    }
    micro = asyncio.run(_decision_cost(environment))
    refusals = _refusal_throughput(environment, wrk)
    base = medians["no limiter"]["requests_per_second"]
    report.figures = {
        "wrk_medians": medians,
        "throughput_ratio_in_memory": round(medians["in-memory"]["requests_per_second"] / base, 3),
        "throughput_ratio_redis": round(medians["redis"]["requests_per_second"] / base, 3),
        "per_request_cpu_us_no_limiter": round(1e6 / base, 1),
        **micro,
        **refusals,
    }
    for name in ("in-memory", "redis"):
        m = medians[name]
        report.check(
            f"{name} limiter: every response a 200",
            m["non_2xx"] == 0,
            f"{m['requests_per_second']:,.0f} req/s = {m['requests_per_second'] / base:.1%} of no limiter;"
            f" p50 {m['p50_ms'] - medians['no limiter']['p50_ms']:+.2f} ms",
        )
    return report


def _refusal_throughput(environment: Environment, wrk: str) -> dict[str, float]:
    """How fast one process answers nothing but refusals (wrk, 8 connections, a key far over its
    quota): Keel (Redis limiter, remembered refusals answered before the framework) and the
    refusal floor app (a prebuilt 429), alternated over 2 rounds; medians."""
    token = environment.keys("bench", 1)[0]
    url_path = f"/v1/profiles/{environment.ids[0]}"
    rates: dict[str, list[float]] = {"keel": [], "floor": []}
    for round_number in range(2):
        for name in ("keel", "floor") if round_number == 0 else ("floor", "keel"):
            nodes = (
                keel_nodes(environment, 1, "refusals") if name == "keel" else refusal_floor(environment, 1)
            )
            with nodes as ports:
                command = [wrk, "-t1", "-c8", "-d5s", "--latency", "-H", f"Authorization: Bearer {token}"]
                url = f"http://127.0.0.1:{ports[0]}{url_path}"
                subprocess.run(
                    [*command[:3], "-d2s", *command[4:], url], capture_output=True, timeout=60, check=True
                )
                done = subprocess.run([*command, url], capture_output=True, text=True, timeout=60, check=True)
            result = parse_wrk(name, done.stdout)
            rates[name].append(result.requests_per_second)
            print(
                f"  round {round_number + 1} refusals only, {name:<5} {result.requests_per_second:8,.0f}/s",
                flush=True,
            )
    keel, floor = statistics.median(rates["keel"]), statistics.median(rates["floor"])
    print(
        f"  refusals/s: Keel {keel:,.0f}, refusal floor app {floor:,.0f} (ratio {keel / floor:.2f})",
        flush=True,
    )
    return {
        "refusals_per_s_keel": round(keel, 1),
        "refusals_per_s_floor_app": round(floor, 1),
        "refusal_throughput_ratio_keel_to_floor": round(keel / floor, 3),
    }


async def _decision_cost(environment: Environment) -> dict[str, float]:
    """Sequential decisions in this process: the limiter alone, without HTTP around it."""
    from keel.observability.metrics import Metrics
    from keel.ratelimit.guard import RateLimitGuard
    from keel.ratelimit.memory import InMemoryRateLimiter
    from keel.ratelimit.policy import Plan, Policy
    from keel.ratelimit.ports import RateLimiter
    from keel.ratelimit.redis import RedisRateLimiter, connect

    plan = Plan("p", (Policy("burst", 1_000_000, 1, 1_000_000), Policy("hourly", 10**9, 3600, 10**9)), 10**6)
    figures: dict[str, float] = {}
    limiters: dict[str, RateLimiter] = {
        "in_memory": InMemoryRateLimiter(),
        "redis": RedisRateLimiter(connect(environment.redis.url), timeout_seconds=0.5),
    }
    for name, limiter in limiters.items():
        guard = RateLimitGuard(limiter, Metrics())
        count = 20_000 if name == "in_memory" else 5_000
        for n in range(200):
            await guard.admit(f"warm-{n}", plan, 1, hold=False)  # the decision alone: no slot
            guard.release(f"warm-{n}")
        began = time.perf_counter()
        for n in range(count):
            client = f"c{n % 1000}"
            await guard.admit(client, plan, 1, hold=False)
            guard.release(client)
        figures[f"decision_us_{name}"] = round((time.perf_counter() - began) / count * 1e6, 1)
        await guard.close()
    print(
        f"  per decision, in process: in-memory {figures['decision_us_in_memory']} µs,"
        f" Redis {figures['decision_us_redis']} µs (a loopback round trip + the script)",
        flush=True,
    )
    return figures
