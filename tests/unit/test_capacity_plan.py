"""The capacity planner's arithmetic: the USL fit, the knee, the plan, and the report's files."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from keel.capacity.measure import Measurement, Ramp, Series, measurement_from_json
from keel.capacity.plan import Need, mixed, plan
from keel.capacity.report import write_report
from keel.capacity.steps import Step, knee, percentile
from keel.capacity.usl import fit_usl


def _usl(n: int, lam: float = 100.0, sigma: float = 0.05, kappa: float = 0.002) -> float:
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def test_the_fit_recovers_the_coefficients_of_exact_points() -> None:
    fit = fit_usl([(n, _usl(n)) for n in range(1, 9)])
    assert fit.lam == pytest.approx(100.0)
    assert fit.sigma == pytest.approx(0.05, abs=1e-9)
    assert fit.kappa == pytest.approx(0.002, abs=1e-9)
    assert fit.peak_n() == pytest.approx(math.sqrt(0.95 / 0.002))
    assert fit.worst_error() == pytest.approx(0.0, abs=1e-9)
    assert fit.throughput(5) == pytest.approx(_usl(5))


def test_a_coefficient_that_would_be_negative_is_held_at_zero() -> None:
    # Better than linear at 2, worse at 4: unconstrained least squares gives σ < 0.
    points = [(1, 100.0), (2, 205.0), (4, 300.0)]
    fit = fit_usl(points)
    assert fit.sigma == 0.0
    assert fit.kappa > 0
    # Perfectly linear points: no contention, no coherency cost, no peak.
    linear = fit_usl([(1, 50.0), (2, 100.0), (3, 150.0)])
    assert (linear.sigma, linear.kappa) == (0.0, 0.0)
    assert math.isinf(linear.peak_n())


def test_one_point_beyond_one_is_all_contention() -> None:
    fit = fit_usl([(1, 100.0), (2, 150.0)])
    assert fit.kappa == 0.0
    assert fit.throughput(2) == pytest.approx(150.0)


@pytest.mark.parametrize(
    "points",
    [[(2, 100.0), (3, 120.0)], [(1, 100.0), (1, 90.0)], [(1, 0.0), (2, 10.0)], [(0, 1.0), (1, 2.0)]],
)
def test_a_fit_without_its_footing_is_refused(points: list[tuple[int, float]]) -> None:
    with pytest.raises(ValueError, match=r"N = 1|one throughput per N|N must be"):
        fit_usl(points)


def _step(
    offered: float, ok: int, p99: float, *, failed: int = 0, mean: float = 4.0, redis: int | None = None
) -> Step:
    return Step(
        offered_rps=offered,
        seconds=1.0,
        sent=ok + failed,
        ok=ok,
        failed=failed,
        p50_ms=p99 / 2,
        p99_ms=p99,
        mean_ms=mean,
        server_cpu_us=None,
        redis_commands=redis,
        failures={"503": failed} if failed else {},
        # The p99 of all sent, failures the slowest: here as the 2xx p99 while at most 1 % failed.
        p99_all_ms=p99 if failed <= 0.01 * (ok + failed) else None,
    )


def test_the_knee_is_the_greatest_throughput_within_the_slo() -> None:
    steps = [_step(100, 100, 5), _step(200, 200, 9), _step(300, 290, 80), _step(250, 260, 8, failed=10)]
    assert knee(steps, 50) == steps[1]  # the last: 3.7 % failed; the third: p99 over the SLO
    assert knee(steps, 100) == steps[2]
    assert knee(steps, 4) is None


def test_a_step_whose_failures_make_its_p99_is_past_the_slo() -> None:
    quick = _step(100, 99, 5, failed=1)
    assert quick.within(50)
    # 1 % failed, the 2xx p99 quick, but the p99 of everything sent is a failure's: past any SLO.
    assert not Step(**{**quick.as_json(), "p99_all_ms": None}).within(50)
    assert not Step(**{**quick.as_json(), "p99_all_ms": 60.0}).within(50)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def _measurement(knees: dict[int, tuple[float, float]], unit: str = "workers") -> Measurement:
    """One series per kind and scale: a step within a 50 ms SLO at the knee, one past it."""
    series = []
    for scale, (reads, writes) in knees.items():
        for kind, rate in (("read", reads), ("write", writes)):
            series.append(
                Series(
                    kind,
                    scale,
                    [_step(rate, int(rate), 10, redis=3 * int(rate)), _step(rate * 2, int(rate), 900)],
                )
            )
    return Measurement(
        measured_at="2026-12-08T00:00:00+00:00",
        unit=unit,
        targets={scale: f"keel serve --workers {scale}" for scale in knees},
        ramp=Ramp(start_rps=100, step_rps=100, max_rps=1000, step_seconds=1, p99_slo_ms=50, read_share=0.9),
        series=series,
        client_cpu_seconds=1.0,
        cores=2,
    )


def test_a_plan_from_one_scale_shows_its_arithmetic() -> None:
    result = plan(
        _measurement({1: (1000.0, 200.0)}), Need(peak_rps=1000, read_share=0.9, p99_slo_ms=50, headroom=0.3)
    )
    # 1 / (0.9/1000 + 0.1/200) = 714.3 a node; 1,300 needed: 2 nodes, + 1 spare.
    assert mixed(1000, 200, 0.9) == pytest.approx(1 / 0.0014)
    assert result.nodes == 3
    assert result.workers_per_node == 1
    # 1,300/s over 2 serving workers × 4 ms mean = 2.6 in flight → 3.
    assert result.pool_per_worker == 3
    assert result.max_connections == 3 * 1 * 3 + 10
    assert result.redis_ops == pytest.approx(1300 * 3)
    text = "\n".join(result.lines)
    assert "⌈1,300 / 714⌉ = 2, + 1 spare = 3" in text
    assert "No USL fit" in text


def test_a_plan_runs_the_workers_of_greatest_fitted_throughput() -> None:
    # Reads and writes both peak at 2 workers and fall at 3.
    measurement = _measurement({1: (1000.0, 200.0), 2: (1800.0, 360.0), 3: (1500.0, 300.0)})
    result = plan(
        measurement, Need(peak_rps=4000, read_share=0.9, p99_slo_ms=50, headroom=0.3, spare_nodes=2)
    )
    assert result.workers_per_node == 2
    # The fit of these three points peaks past 3 (σ held at 0): a measured scale is judged by what
    # was measured, not by the curve.
    curve = fit_usl([(1, 1000.0), (2, 1800.0), (3, 1500.0)])
    assert curve.throughput(3) > curve.throughput(2)
    assert result.nodes == math.ceil(4000 * 1.3 / mixed(1800, 360, 0.9)) + 2
    assert "USL over workers 1, 2, 3" in "\n".join(result.lines)


def test_a_stricter_slo_judges_the_same_steps_again_and_a_looser_one_cannot_find_more() -> None:
    measurement = _measurement({1: (1000.0, 200.0)})
    with pytest.raises(ValueError, match="no scale has both"):
        plan(measurement, Need(peak_rps=100, read_share=0.9, p99_slo_ms=5, headroom=0))
    # A 1 s SLO admits the second steps (p99 900 ms), which answered no more.
    loose = plan(measurement, Need(peak_rps=100, read_share=0.9, p99_slo_ms=1000, headroom=0))
    assert loose.nodes == 2


def test_nodes_that_stop_scaling_below_the_need_give_no_plan() -> None:
    measurement = _measurement({1: (1000.0, 200.0), 2: (1200.0, 240.0), 3: (1100.0, 220.0)}, unit="nodes")
    result = plan(measurement, Need(peak_rps=5000, read_share=0.9, p99_slo_ms=50, headroom=0.3))
    assert result.nodes is None
    assert any("none measured or fitted reaches" in line for line in result.lines)
    enough = plan(measurement, Need(peak_rps=500, read_share=0.9, p99_slo_ms=50, headroom=0.3))
    assert enough.nodes == 1 + 1


@pytest.mark.parametrize(
    "need",
    [
        Need(peak_rps=0, read_share=0.9, p99_slo_ms=50, headroom=0.3),
        Need(peak_rps=10, read_share=1.5, p99_slo_ms=50, headroom=0.3),
        Need(peak_rps=10, read_share=0.9, p99_slo_ms=0, headroom=0.3),
        Need(peak_rps=10, read_share=0.9, p99_slo_ms=50, headroom=-1),
    ],
)
def test_a_need_that_means_nothing_is_refused(need: Need) -> None:
    with pytest.raises(ValueError, match=r"read share|positive"):
        plan(_measurement({1: (1000.0, 200.0)}), need)


def test_the_report_round_trips_and_its_plots_are_svg(tmp_path: Path) -> None:
    measurement = _measurement({1: (1000.0, 200.0), 2: (1800.0, 360.0)})
    measurement.ramp = Ramp(**{**measurement.ramp.__dict__, "kinds": ("read", "write")})
    written = write_report(measurement, tmp_path / "cap", "keel capacity measure ...")
    names = sorted(path.name for path in written)
    assert names == sorted(
        ["cap.json", "cap.md", "cap-read-throughput.svg", "cap-read-latency.svg", "cap-write-throughput.svg",
         "cap-write-latency.svg", "cap-usl.svg"]
    )  # fmt: skip
    again = measurement_from_json(json.loads((tmp_path / "cap.json").read_text()))
    assert again == measurement
    for path in written:
        if path.suffix == ".svg":
            root = ET.fromstring(path.read_text())  # noqa: S314 (written by the test itself)
            assert root.tag.endswith("svg")
            assert root.findall("{http://www.w3.org/2000/svg}polyline")
    report = (tmp_path / "cap.md").read_text()
    assert "**read, 2 workers**: knee 1,800/s" in report
    assert "| 2,000 | 1,000 | 0 of 1,000 | 450.0 | 900.0 | 900.0 | 0 | n/a | n/a | no |" in report


def test_the_operator_may_fix_the_workers_a_node_runs() -> None:
    measurement = _measurement({1: (1000.0, 200.0), 2: (1800.0, 360.0), 3: (1500.0, 300.0)})
    result = plan(
        measurement, Need(peak_rps=4000, read_share=0.9, p99_slo_ms=50, headroom=0.3, workers_per_node=1)
    )
    assert result.workers_per_node == 1
    assert result.nodes == math.ceil(4000 * 1.3 / mixed(1000, 200, 0.9)) + 1
    assert any("Workers per node: 1 (as asked" in line for line in result.lines)
    # Nodes measured as running two workers each: the pool is a worker's share of the node's load.
    nodes = _measurement({1: (1000.0, 200.0)}, unit="nodes")
    need = Need(peak_rps=700, read_share=0.9, p99_slo_ms=50, headroom=0, spare_nodes=0)
    one, two = plan(nodes, need), plan(nodes, replace(need, workers_per_node=2))
    assert one.nodes == two.nodes == 1
    assert (one.workers_per_node, two.workers_per_node) == (1, 2)
    # 700/s on one worker × 4 ms = 2.8 → 3; over two workers: 350/s × 4 ms = 1.4 → 2.
    assert (one.pool_per_worker, two.pool_per_worker) == (3, 2)
    assert two.max_connections == 1 * 2 * 2 + 10
    with pytest.raises(ValueError, match="workers per node"):
        plan(nodes, replace(need, workers_per_node=0))


def test_the_mix_measured_at_the_share_asked_is_used_and_the_model_elsewhere() -> None:
    measurement = _measurement({1: (1000.0, 200.0)})
    measurement.series.append(Series("mix", 1, [_step(900, 900, 10), _step(1800, 900, 900)]))
    at_measured_share = plan(measurement, Need(peak_rps=1000, read_share=0.9, p99_slo_ms=50, headroom=0))
    assert at_measured_share.node_rps == 900
    assert any("900/s (used)" in line for line in at_measured_share.lines)
    other_share = plan(measurement, Need(peak_rps=1000, read_share=0.5, p99_slo_ms=50, headroom=0))
    assert other_share.node_rps == pytest.approx(mixed(1000, 200, 0.5))
    # 850/s: one node at the measured 900/s (the model's 714/s would need two), + 1 spare.
    assert plan(measurement, Need(peak_rps=850, read_share=0.9, p99_slo_ms=50, headroom=0)).nodes == 1 + 1


def test_nodes_measured_without_one_node_and_a_need_landing_on_a_whole_number() -> None:
    measurement = _measurement({2: (2000.0, 400.0), 3: (2900.0, 580.0)}, unit="nodes")
    result = plan(measurement, Need(peak_rps=1000, read_share=0.9, p99_slo_ms=50, headroom=0.3))
    assert result.nodes == 2 + 1  # 1,300/s: the 2 nodes measured serve 1,429/s
    assert any("No USL fit" in line for line in result.lines)
    # 100 × 1.1 / 110 is 1.0000000000000002 in floating point: one node, not two.
    exact = _measurement({1: (110.0, 110.0)})
    assert (
        plan(exact, Need(peak_rps=100, read_share=0.9, p99_slo_ms=50, headroom=0.1, spare_nodes=0)).nodes == 1
    )


def test_a_ramp_that_ended_within_the_slo_gives_a_lower_bound_and_says_so(tmp_path: Path) -> None:
    measurement = _measurement({1: (1000.0, 200.0)})
    measurement.series[0] = Series("read", 1, [_step(500, 500, 5), _step(1000, 1000, 9)])
    result = plan(measurement, Need(peak_rps=100, read_share=0.9, p99_slo_ms=50, headroom=0))
    assert any("read, 1 worker: the ramp ended within the SLO" in line for line in result.lines)
    assert not any("write, 1 worker: the ramp ended" in line for line in result.lines)
    measurement.ramp = Ramp(**{**measurement.ramp.__dict__, "kinds": ("read", "write")})
    write_report(measurement, tmp_path / "cap", "keel capacity measure ...")
    report = (tmp_path / "cap.md").read_text()
    assert "**read, 1 worker**: knee 1,000/s (offered 1,000/s) or more: the ramp's last step" in report
    assert "**write, 1 worker**: knee 200/s (offered 200/s)\n" in report


def test_a_scale_whose_mix_met_no_slo_at_the_share_asked_is_left_out() -> None:
    measurement = _measurement({1: (1000.0, 200.0), 2: (1800.0, 360.0)})
    measurement.series.append(Series("mix", 1, [_step(500, 500, 10)]))
    measurement.series.append(Series("mix", 2, [_step(500, 500, 900)]))  # past the SLO from the start
    result = plan(measurement, Need(peak_rps=100, read_share=0.9, p99_slo_ms=50, headroom=0))
    assert result.workers_per_node == 1
    assert any("2 workers: the mix had no step within the SLO; left out" in line for line in result.lines)
    # At another share the model decides, and both scales count.
    other = plan(measurement, Need(peak_rps=100, read_share=0.5, p99_slo_ms=50, headroom=0))
    assert other.workers_per_node == 2
