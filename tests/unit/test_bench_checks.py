"""Negative controls for the benchmarks' gates: each check is fed the outcome a broken server,
limiter or run would produce and must fail on it (and pass on a sound one, so that it is not
simply always failing). A gate that cannot fail makes a benchmark's verdict worthless."""

from __future__ import annotations

import pytest
from bench.harness import parse_wrk
from bench.ratelimit.atomic import AtomicOutcome, atomic_checks
from bench.ratelimit.shared import ATOMIC_BURST
from bench.read_figures import (
    CacheUse,
    aa_noise,
    allowed_misses,
    cache_failures,
    cache_lookups,
    compare,
)
from bench.wrk_answers import AnswerCounts, answer_failures, parse_answers

# --------------------------------------------------------------------------- rate-limit atomicity

REQUESTS = 1_000  # 4 processes x 250, as the scenario fires them


def _atomic(admitted: int, elapsed_s: float = 0.4) -> AtomicOutcome:
    return AtomicOutcome(
        statuses=[200] * admitted + [429] * (REQUESTS - admitted), elapsed_s=elapsed_s, ttls_ms=[59_000]
    )


def _failed(outcome: AtomicOutcome) -> list[str]:
    return [c.name for c in atomic_checks(outcome) if not c.passed]


def test_a_limiter_that_refuses_everything_fails_the_atomicity_scenario() -> None:
    assert _failed(_atomic(0)) == ["admitted within [burst, burst + what refilled during the burst]"]


def test_a_limiter_that_admits_everything_fails_the_atomicity_scenario() -> None:
    assert "admitted within [burst, burst + what refilled during the burst]" in _failed(_atomic(REQUESTS))
    assert "admitted <= limit + burst" in _failed(_atomic(REQUESTS))


def test_a_limiter_that_decides_per_process_fails_the_atomicity_scenario() -> None:
    # Four processes each admitting their own burst: what a limiter without a shared store does.
    assert _failed(_atomic(4 * ATOMIC_BURST)) == [
        "admitted within [burst, burst + what refilled during the burst]"
    ]


@pytest.mark.parametrize(("admitted", "elapsed_s"), [(ATOMIC_BURST, 0.1), (ATOMIC_BURST + 1, 0.4), (12, 0.7)])
def test_a_correct_shared_limiter_passes_the_atomicity_scenario(admitted: int, elapsed_s: float) -> None:
    assert _failed(_atomic(admitted, elapsed_s)) == []


def test_the_atomicity_bounds_follow_from_the_plan_and_the_burst_duration() -> None:
    # 100/min refills one unit per 0.6 s: a 1.3 s burst may see 2 refills, plus one at the start.
    assert _atomic(ATOMIC_BURST, elapsed_s=1.3).admissible() == (ATOMIC_BURST, ATOMIC_BURST + 3)


def test_a_server_error_or_a_key_without_ttl_fails_the_atomicity_scenario() -> None:
    errors = AtomicOutcome(statuses=[200] * 10 + [500] + [429] * 989, elapsed_s=0.2, ttls_ms=[59_000])
    assert _failed(errors) == ["no errors"]
    no_ttl = AtomicOutcome(statuses=[200] * 10 + [429] * 990, elapsed_s=0.2, ttls_ms=[-1])
    assert _failed(no_ttl) == ["every limiter key has a TTL"]


# --------------------------------------------------------------------------- answers of a wrk run


def test_a_500_voids_a_measured_run() -> None:
    assert answer_failures("graphql", AnswerCounts(checked=100, non_2xx=1, graphql_errors=0)) == [
        "graphql: 1 of 100 answers were not 2xx"
    ]


def test_a_graphql_error_returned_with_200_voids_a_measured_run() -> None:
    assert answer_failures("graphql", AnswerCounts(checked=100, non_2xx=0, graphql_errors=3)) == [
        "graphql: 3 of 100 2xx answers carried GraphQL errors"
    ]


def test_a_run_whose_answers_were_not_checked_is_void() -> None:
    assert answer_failures("rest", AnswerCounts(checked=0, non_2xx=0, graphql_errors=0)) != []
    with pytest.raises(RuntimeError, match="no `answers:` line"):
        parse_answers("Requests/sec: 100.0\n")


def test_clean_answers_pass() -> None:
    counts = parse_answers("...\nanswers: checked=812 non_2xx=0 graphql_errors=0\n")
    assert counts == AnswerCounts(checked=812, non_2xx=0, graphql_errors=0)
    assert answer_failures("rest", counts) == []


_WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1
  1 threads and 1 connections
  Latency Distribution
     50%  1.00ms
     99%  2.00ms
  100 requests in 1.00s, 10.00KB read
{extra}Requests/sec:    100.00
"""


def test_wrk_non_2xx_answers_or_socket_errors_void_a_read_run() -> None:
    assert not parse_wrk("keel", _WRK_OUTPUT.format(extra="")).failed
    assert parse_wrk("keel", _WRK_OUTPUT.format(extra="  Non-2xx or 3xx responses: 7\n")).failed
    errors = "  Socket errors: connect 0, read 1, write 0, timeout 0\n"
    assert parse_wrk("keel", _WRK_OUTPUT.format(extra=errors)).failed


# --------------------------------------------------------------------------- the REST read figures


METRICS = """# TYPE keel_profile_cache_lookups_total counter
keel_profile_cache_lookups_total{{outcome="hit"}} {hit}
keel_profile_cache_lookups_total{{outcome="miss"}} {miss}
keel_profile_cache_lookups_total{{outcome="coalesced"}} {coalesced}
keel_profile_cache_lookups_total{{outcome="stale"}} 0.0
keel_profile_cache_lookups_total{{outcome="error"}} 0.0
"""


def _use(hit: float, miss: float, coalesced: float = 0.0) -> CacheUse:
    before = cache_lookups(METRICS.format(hit=5.0, miss=5.0, coalesced=0.0))
    after = cache_lookups(METRICS.format(hit=5.0 + hit, miss=5.0 + miss, coalesced=coalesced))
    return CacheUse.between(before, after)


def test_an_uncached_run_that_used_the_cache_is_void() -> None:
    assert cache_failures("uncached", 1_000, _use(hit=1, miss=999)) != []
    assert cache_failures("uncached", 1_000, _use(hit=0, miss=990, coalesced=10)) != []


def test_an_uncached_run_that_never_used_the_cache_passes() -> None:
    # With the cache off, Keel counts no lookups at all.
    assert cache_failures("uncached", 1_000, CacheUse.between({}, {})) == []


ALLOWED = allowed_misses(hot_ids=16, duration_s=20, fresh_s=5.0)


def test_the_misses_a_cache_hit_run_may_see_follow_from_the_hot_set_and_freshness() -> None:
    assert ALLOWED == 16 * (4 + 2)


def test_a_cache_hit_run_that_missed_the_cache_is_void() -> None:
    assert cache_failures("cached", 1_000, _use(hit=0, miss=1_000), ALLOWED) != []
    assert cache_failures("cached", 1_000, _use(hit=1_000 - ALLOWED - 1, miss=ALLOWED + 1), ALLOWED) != []
    assert cache_failures("cached", 0, _use(hit=0, miss=0), ALLOWED) != []


def test_a_cache_hit_run_served_from_the_cache_passes() -> None:
    assert cache_failures("cached", 1_000, _use(hit=1_000 - ALLOWED, miss=ALLOWED), ALLOWED) == []
    assert cache_failures("cached", 1_000, _use(hit=990, miss=5, coalesced=5), ALLOWED) == []


def test_ratios_and_the_aa_noise() -> None:
    # Each round's ratio first (0.4, 0.5, 0.45 and 3, 2, 2), then their median: a round run while
    # the machine was busier lowers both sides of its ratio alike.
    comparison = compare([400, 500, 450], [30, 20, 40], [1_000, 1_000, 1_000], [10, 10, 20])
    assert comparison.throughput_ratio == pytest.approx(0.45)
    assert comparison.p99_ratio == pytest.approx(2.0)
    assert comparison.keel_rps == 450
    busy = compare([200, 500, 450], [30, 20, 40], [500, 1_000, 1_000], [10, 10, 20])
    assert busy.throughput_ratio == pytest.approx(0.45)
    with pytest.raises(ValueError, match="per round"):
        compare([400], [30], [1_000, 900], [10, 10])
    noise = aa_noise([1_000, 1_000, 1_000], [950, 1_020, 1_100])
    assert noise.median_deviation == pytest.approx(0.05)
    assert noise.worst_deviation == pytest.approx(0.1)
    with pytest.raises(ValueError, match="two runs"):
        aa_noise([1_000], [])


def test_no_cache_hit_run_without_freshness() -> None:
    with pytest.raises(ValueError, match="no cache hits"):
        allowed_misses(hot_ids=16, duration_s=20, fresh_s=0)
