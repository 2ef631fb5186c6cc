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

import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_LOOKUPS = re.compile(r'^keel_profile_cache_lookups_total\{outcome="([a-z]+)"\} ([0-9.e+]+)$', re.MULTILINE)
# Reads answered without PostgreSQL: from the cache, or by joining a read already in flight.
_SERVED_WITHOUT_DATABASE = ("hit", "coalesced", "stale")


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


def allowed_misses(hot_ids: int, duration_s: float, fresh_s: float) -> int:
    """The misses a cache-hit run may see: an entry is fresh for `fresh_s` (KEEL_CACHE_FRESH_SECONDS),
    then one read per hot id goes to PostgreSQL (concurrent ones join it, as `coalesced`). Plus one
    per id for a period cut by the start of the run, and one for the entry read at its end."""
    if fresh_s <= 0:
        raise ValueError("with a freshness of 0 s every read goes to PostgreSQL: there are no cache hits")
    return hot_ids * (int(duration_s / fresh_s) + 2)


def cache_failures(kind: str, requests: int, use: CacheUse, misses_allowed: int = 0) -> list[str]:
    """Why a Keel run does not measure what its figure claims; empty when it does. `requests`:
    wrk's count for the run; `misses_allowed`: see `allowed_misses` (cache-hit runs only)."""
    if kind == "uncached":
        if use.without_database:
            return [f"uncached run: {use.without_database} reads were answered without PostgreSQL"]
        return []
    if kind == "cached":
        if requests <= 0:
            return ["cache-hit run: no requests"]
        misses = max(use.reads, requests) - use.without_database
        if misses > misses_allowed:
            return [
                f"cache-hit run: {misses} of {max(use.reads, requests)} reads went to PostgreSQL (at most "
                f"{misses_allowed} allowed: one per hot id and freshness period)"
            ]
        return []
    raise ValueError(f"unknown kind of Keel run: {kind!r}")


@dataclass(frozen=True)
class Comparison:
    """Keel against the baseline: medians over rounds, and the ratios as the median of each
    round's own ratio (Keel ÷ the baseline measured in the same round), so that a slow drift of
    the machine's load, which moves both runs of a round alike, cancels out."""

    keel_rps: float
    baseline_rps: float
    keel_p99_ms: float
    baseline_p99_ms: float
    throughput_ratio: float
    p99_ratio: float


def compare(
    keel_rps: Sequence[float],
    keel_p99: Sequence[float],
    baseline_rps: Sequence[float],
    baseline_p99: Sequence[float],
) -> Comparison:
    """One value per round in each sequence, in the same order of rounds."""
    if not keel_rps or not len(keel_rps) == len(keel_p99) == len(baseline_rps) == len(baseline_p99):
        raise ValueError("a comparison needs one Keel and one baseline figure per round")
    return Comparison(
        keel_rps=statistics.median(keel_rps),
        baseline_rps=statistics.median(baseline_rps),
        keel_p99_ms=statistics.median(keel_p99),
        baseline_p99_ms=statistics.median(baseline_p99),
        throughput_ratio=statistics.median(k / b for k, b in zip(keel_rps, baseline_rps, strict=True)),
        p99_ratio=statistics.median(k / b for k, b in zip(keel_p99, baseline_p99, strict=True)),
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


def cpu_seconds(stat_line: str, ticks_per_second: int) -> float:
    """A process's user + system CPU seconds from its `/proc/<pid>/stat` line (fields 14, 15)."""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the live process `pid`, from /proc."""
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def process_tree_cpu_seconds(root: int, ticks_per_second: int) -> float:
    """CPU seconds of `root`, its live children, and the children it has reaped (cutime, cstime):
    a PostgreSQL postmaster and its backends, those that exited during a run included."""
    stat = Path(f"/proc/{root}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks_per_second
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        if int(child[child.rindex(")") + 2 :].split()[1]) == root:
            total += cpu_seconds(child, ticks_per_second)
    return total


def cpu_us_per_request(cpu_before_s: float, cpu_after_s: float, requests: int) -> float:
    """The server's CPU microseconds per request served over one measured run."""
    if requests <= 0:
        raise ValueError("no requests: no CPU per request")
    return (cpu_after_s - cpu_before_s) * 1e6 / requests


def cpu_ratio(keel_us: Sequence[float], baseline_us: Sequence[float]) -> float:
    """Median over rounds of baseline CPU per request ÷ Keel's: above 1, Keel spends less CPU on a
    request than the baseline. On one saturated core it is what the throughput ratio would be;
    it moves far less than wall-clock throughput when other work shares the machine."""
    if not keel_us or len(keel_us) != len(baseline_us):
        raise ValueError("a CPU ratio needs one Keel and one baseline figure per round")
    return statistics.median(b / k for k, b in zip(keel_us, baseline_us, strict=True))
