"""The arithmetic and the gates of bench/rest_read.py, apart from running it, so that unit tests
can feed them outcomes a broken run would produce (tests/unit/test_bench_checks.py).

Two figures, each a ratio of Keel to the baseline's database read (median of rounds):
- uncached: Keel with its profile cache off, random ids; every read reaches PostgreSQL, as every
  baseline read does;
- cache hit: Keel with its cache on, a hot set of ids that fits in it.
Their honesty rests on Keel's own counters: an "uncached" run that hit the cache, or a "cache
hit" run that mostly missed it, measured something else, and voids the figures.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

_LOOKUPS = re.compile(r'^keel_profile_cache_lookups_total\{outcome="([a-z]+)"\} ([0-9.e+]+)$', re.MULTILINE)
# Reads answered without PostgreSQL: from the cache, or by joining a read already in flight.
_SERVED_WITHOUT_DATABASE = ("hit", "coalesced", "stale")
MIN_HIT_SHARE = 0.99  # a cache-hit run may miss once per entry and freshness period, no more


def cache_lookups(metrics_text: str) -> dict[str, float]:
    """Keel's profile cache lookups by outcome, from its /metrics text."""
    return {outcome: float(value) for outcome, value in _LOOKUPS.findall(metrics_text)}


@dataclass(frozen=True)
class CacheUse:
    """What Keel's cache did during one measured run (counter differences)."""

    reads: int  # every lookup the cache counted
    without_database: int  # hits, coalesced and stale answers

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> CacheUse:
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after.keys() | before.keys()}
        return cls(
            reads=round(sum(delta.values())),
            without_database=round(sum(delta.get(k, 0.0) for k in _SERVED_WITHOUT_DATABASE)),
        )


def cache_failures(kind: str, requests: int, use: CacheUse) -> list[str]:
    """Why a Keel run does not measure what its figure claims; empty when it does."""
    if kind == "uncached":
        if use.without_database:
            return [f"uncached run: {use.without_database} reads were answered without PostgreSQL"]
        return []
    if kind == "cached":
        if requests <= 0:
            return ["cache-hit run: no requests"]
        share = use.without_database / requests
        if share < MIN_HIT_SHARE:
            return [
                f"cache-hit run: only {use.without_database} of {requests} reads ({share:.1%}) came from "
                f"the cache (at least {MIN_HIT_SHARE:.0%} required)"
            ]
        return []
    raise ValueError(f"unknown kind of Keel run: {kind!r}")


@dataclass(frozen=True)
class Comparison:
    """Keel against the baseline: medians over rounds and their ratios."""

    keel_rps: float
    baseline_rps: float
    keel_p99_ms: float
    baseline_p99_ms: float

    @property
    def throughput_ratio(self) -> float:
        return self.keel_rps / self.baseline_rps

    @property
    def p99_ratio(self) -> float:
        return self.keel_p99_ms / self.baseline_p99_ms


def compare(
    keel_rps: Sequence[float],
    keel_p99: Sequence[float],
    baseline_rps: Sequence[float],
    baseline_p99: Sequence[float],
) -> Comparison:
    return Comparison(
        keel_rps=statistics.median(keel_rps),
        baseline_rps=statistics.median(baseline_rps),
        keel_p99_ms=statistics.median(keel_p99),
        baseline_p99_ms=statistics.median(baseline_p99),
    )


@dataclass(frozen=True)
class Noise:
    """The A/A spread: the baseline against itself, measured twice per round."""

    ratios: tuple[float, ...]  # second run / first run, per round

    @property
    def median_deviation(self) -> float:
        """Median of |1 - ratio|: how far apart two identical runs typically land."""
        return statistics.median(abs(1 - r) for r in self.ratios)

    @property
    def worst_deviation(self) -> float:
        return max(abs(1 - r) for r in self.ratios)


def aa_noise(first: Sequence[float], second: Sequence[float]) -> Noise:
    if len(first) != len(second) or not first:
        raise ValueError("the A/A noise needs the baseline's two runs of each round")
    return Noise(tuple(b / a for a, b in zip(first, second, strict=True)))
