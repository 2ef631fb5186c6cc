"""`keel capacity plan`: how big a fleet must be for a peak, from a measurement (measure.py), with
the arithmetic shown.

1. The knee of every ramp is taken again at the plan's p99 SLO (the steps are kept, so a plan may
   ask a stricter SLO than the measurement judged; never a looser one than a step can show).
2. At the read share the mix was measured with, its knee is the capacity. At another share r,
   a request costs r of a read and 1 − r of a write: capacity = 1 / (r / reads + (1 − r) /
   writes); both are printed, and which one was used.
3. Per scale unit (workers or nodes), the Universal Scalability Law is fitted to the knees
   (usl.py). A scale measured is judged by what was measured, never by the curve; the curve
   only reaches beyond the scales measured. With workers, the plan runs the number of workers
   of greatest measured mix throughput; with nodes, the smallest fleet whose throughput
   (measured, else fitted) covers the need (none, when the curve peaks below it).
4. Nodes = ⌈peak × (1 + headroom) / node capacity⌉ + spare nodes (a node can fail or be
   deployed without the fleet falling under the peak).
5. Database pool per worker by Little's law: the requests in flight in a worker at the planned
   load = its requests/s × the mean latency at the knee of the scale measured nearest the plan's
   (a ceiling: a request holds a connection for part of its time only), at least 2;
   max_connections = every worker's pool + reserved. With nodes, each node is taken to run
   `workers_per_node` workers (1 unless told).
6. Redis operations/s = the planned load × the commands Redis processed per request: the mix's
   at the share it was measured with, else reads' and writes' weighted by the share asked (when
   Redis was watched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keel.capacity.measure import Measurement, counted
from keel.capacity.steps import Step, knee, ramp_ran_out
from keel.capacity.usl import UslFit, fit_usl


@dataclass(frozen=True)
class Need:
    peak_rps: float
    read_share: float
    p99_slo_ms: float
    headroom: float  # 0.3: plan for 30 % over the peak
    spare_nodes: int = 1
    reserved_connections: int = 10  # migrations, the events relay, operators
    workers_per_node: int | None = None  # the operator's choice (an agent check needs 1); None: the best


@dataclass(frozen=True)
class Plan:
    nodes: int | None  # None: the measured scaling cannot reach the need
    workers_per_node: int
    pool_per_worker: int
    max_connections: int
    redis_ops: float | None
    node_rps: float  # what one node serves within the SLO, as the plan counts it
    lines: list[str]  # the arithmetic, in order


def mixed(reads: float, writes: float, read_share: float) -> float:
    return 1 / (read_share / reads + (1 - read_share) / writes)


def _knees(measurement: Measurement, kind: str, slo: float, lines: list[str]) -> dict[int, Step]:
    found = {}
    for series in measurement.series:
        if series.kind == kind:
            step = knee(series.steps, slo)
            if step is not None:
                found[series.scale] = step
            if ramp_ran_out(series.steps, slo):
                lines.append(
                    f"  ({kind}, {counted(series.scale, measurement.unit)}: the ramp ended within the SLO;"
                    " its knee is a lower bound, and the plan may be larger than needed)"
                )
    return found


def _ceil(value: float) -> int:
    """⌈value⌉, not fooled by floating point (1.1 × 100 / 110 is 1.0000000000000002)."""
    return math.ceil(value - 1e-9)


def _redis_per_request(mix: Step | None, read: Step, write: Step, read_share: float) -> float | None:
    """Redis commands a request: the mix's, measured at the share asked; else reads' and writes'
    weighted by it."""
    if mix is not None and mix.redis_per_request is not None:
        return mix.redis_per_request
    if read.redis_per_request is None or write.redis_per_request is None:
        return None
    return read_share * read.redis_per_request + (1 - read_share) * write.redis_per_request


def plan(measurement: Measurement, need: Need) -> Plan:
    if not 0 <= need.read_share <= 1:
        raise ValueError("the read share is between 0 and 1")
    figures = (need.peak_rps, need.p99_slo_ms, need.headroom)
    if not all(math.isfinite(value) for value in figures) or min(*figures[:2]) <= 0 or need.headroom < 0:
        raise ValueError("the peak and the SLO are positive and finite, the headroom finite and at least 0")
    if need.workers_per_node is not None and need.workers_per_node < 1:
        raise ValueError("workers per node: at least 1")
    unit = measurement.unit
    lines = [
        f"Measured {measurement.measured_at}: "
        + ", ".join(f"{counted(n, unit)}: {what}" for n, what in sorted(measurement.targets.items()))
        + ".",
        f"Knees at p99 <= {need.p99_slo_ms:g} ms (the measurement's ramps judged again; at most 1 % failed):",
    ]
    reads = _knees(measurement, "read", need.p99_slo_ms, lines)
    writes = _knees(measurement, "write", need.p99_slo_ms, lines)
    mixes = _knees(measurement, "mix", need.p99_slo_ms, lines)
    same_mix = abs(need.read_share - measurement.ramp.read_share) < 0.005
    scales = sorted(set(reads) & set(writes))
    if same_mix:
        # A mix measured at the share asked, with no step within the SLO: that scale serves
        # less than the mix's first step, whatever the model would say.
        failed = {s.scale for s in measurement.series if s.kind == "mix"} - set(mixes)
        for n in sorted(failed & set(scales)):
            lines.append(f"  {counted(n, unit)}: the mix had no step within the SLO; left out")
        scales = [n for n in scales if n not in failed]
    if not scales:
        raise ValueError(
            f"no scale has both a read and a write step (and its mix, when measured at this share)"
            f" within p99 <= {need.p99_slo_ms:g} ms: "
            "measure from a lower rate, or with a looser SLO"
        )
    # The mix measured at the share asked is the figure to use; the model is for other shares.
    capacity: dict[int, float] = {}
    for n in scales:
        modelled = mixed(reads[n].throughput, writes[n].throughput, need.read_share)
        use_measured = same_mix and n in mixes
        capacity[n] = mixes[n].throughput if use_measured else modelled
        measured = (
            f"; the mix measured at {measurement.ramp.read_share:.0%} reads: {mixes[n].throughput:,.0f}/s"
            + (" (used)" if use_measured else "")
            if n in mixes
            else ""
        )
        lines.append(
            f"  {counted(n, unit)}: reads {reads[n].throughput:,.0f}/s (p99 {reads[n].p99_ms:.1f} ms), writes"
            f" {writes[n].throughput:,.0f}/s (p99 {writes[n].p99_ms:.1f} ms); modelled at"
            f" {need.read_share:.0%} reads 1 / ({need.read_share:g}/{reads[n].throughput:,.0f}"
            f" + {1 - need.read_share:g}/{writes[n].throughput:,.0f}) = {modelled:,.0f}/s"
            + ("" if use_measured else " (used)")
            + measured
        )
    fit: UslFit | None = None
    if 1 in capacity and len(capacity) > 1:
        fit = fit_usl(sorted(capacity.items()))
        peak = fit.peak_n()
        lines.append(
            f"USL over {unit} {', '.join(map(str, scales))}: λ = {fit.lam:,.0f}/s, σ = {fit.sigma:.4f},"
            f" κ = {fit.kappa:.4f}; peak at N = {'∞' if math.isinf(peak) else f'{peak:.2f}'};"
            f" worst point {fit.worst_error():.1%} off the curve"
        )
    else:
        lines.append(
            f"No USL fit: it needs {counted(1, unit)} and at least one more among the scales measured."
        )
    required = need.peak_rps * (1 + need.headroom)
    lines.append(f"Need: {need.peak_rps:,.0f}/s × (1 + {need.headroom:g}) = {required:,.0f}/s.")

    def curve(n: int) -> float:
        if n in capacity:
            return capacity[n]
        if fit is None:
            raise ValueError(f"{counted(n, unit)}: not measured, and no fit to reach it")
        return fit.throughput(n)

    nodes: int | None
    if unit == "workers":
        workers = need.workers_per_node or max(scales, key=curve)
        per_node = curve(workers)
        serving = _ceil(required / per_node)
        nodes = serving + need.spare_nodes
        why = (
            "as asked"
            if need.workers_per_node
            else f"the greatest measured throughput among {', '.join(map(str, scales))} {unit}"
        )
        source = "measured" if workers in capacity else "fitted"
        lines.append(f"Workers per node: {workers} ({why}: {per_node:,.0f}/s a node, {source}).")
        lines.append(
            f"Nodes: ⌈{required:,.0f} / {per_node:,.0f}⌉ = {serving}, + {need.spare_nodes} spare = {nodes}."
        )
        per_worker = required / (serving * workers)
        measured_near = min(scales, key=lambda n: abs(n - workers))
    else:
        # Each node measured ran this many workers (the measurement does not know): 1 unless told.
        workers = need.workers_per_node or 1
        reach = range(1, 1001) if fit else scales
        serving_or_none = next((n for n in reach if curve(n) >= required), None)
        if serving_or_none is None:
            nodes = None
            lines.append(
                f"Nodes: none measured or fitted reaches {required:,.0f}/s"
                + (f" (the fitted peak is {fit.throughput(min(fit.peak_n(), 1000)):,.0f}/s)" if fit else "")
                + ": the bottleneck is shared (the database?), not the nodes."
            )
            serving = max(scales)
        else:
            serving = serving_or_none
            nodes = serving + need.spare_nodes
            lines.append(
                f"Nodes: the fewest whose {'measured' if serving in capacity else 'fitted'} throughput covers"
                f" {required:,.0f}/s: {serving} ({curve(serving):,.0f}/s),"
                f" + {need.spare_nodes} spare = {nodes}."
            )
        per_worker = required / (serving * workers)
        per_node = curve(serving) / serving
        measured_near = min(scales, key=lambda n: abs(n - serving))
    at_knee = mixes.get(measured_near) or reads[measured_near]
    in_flight = per_worker * at_knee.mean_ms / 1000
    pool = max(2, _ceil(in_flight))
    total_workers = (nodes if nodes is not None else serving) * workers
    max_connections = total_workers * pool + need.reserved_connections
    lines.append(
        f"Pool per worker (KEEL_DB_POOL_MAX): {per_worker:,.0f}/s × {at_knee.mean_ms:.1f} ms mean at the"
        f" knee ({counted(measured_near, unit)}) = {in_flight:.2f} in flight → {pool} (at least 2)."
    )
    lines.append(
        f"max_connections: {counted(total_workers, 'workers')} × {pool}"
        f" + {need.reserved_connections} reserved = {max_connections}."
    )
    redis_ops = None
    per_request = _redis_per_request(
        mixes.get(measured_near) if same_mix else None,
        reads[measured_near],
        writes[measured_near],
        need.read_share,
    )
    if per_request is not None:
        redis_ops = required * per_request
        lines.append(
            f"Redis: {required:,.0f}/s × {per_request:.2f} commands a request (as Redis counts them:"
            " a Lua script's own included)"
            f" at {counted(measured_near, unit)} = {redis_ops:,.0f} ops/s."
        )
    else:
        lines.append("Redis: not watched in this measurement (measure with --redis-url-env).")
    return Plan(nodes, workers, pool, max_connections, redis_ops, per_node, lines)
