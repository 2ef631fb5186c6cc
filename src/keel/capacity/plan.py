"""`keel capacity plan`: how big a fleet must be for a peak, from a measurement (measure.py), with
the arithmetic shown.

1. The knee of every ramp is taken again at the plan's p99 SLO (the steps are kept, so a plan may
   ask a stricter SLO than the measurement judged; never a looser one than a step can show).
2. A read/write mix at the asked read share r costs, per request, r of a read and 1 − r of a
   write: capacity = 1 / (r / reads + (1 − r) / writes) (the measured mix is shown beside it as a
   check of that model).
3. Per scale unit (workers or nodes), the Universal Scalability Law is fitted to the knees
   (usl.py). A scale measured is judged by what was measured, never by the curve; the curve
   only reaches beyond the scales measured. With workers, the plan runs the number of workers
   of greatest measured mix throughput; with nodes, the smallest fleet whose throughput
   (measured, else fitted) covers the need (none, when the curve peaks below it).
4. Nodes = ⌈peak × (1 + headroom) / node capacity⌉ + spare nodes (a node can fail or be
   deployed without the fleet falling under the peak).
5. Database pool per worker by Little's law: the requests in flight in a worker at the planned
   load = its requests/s × the mean latency at the knee (a ceiling: a request holds a connection
   for part of its time only), at least 2; max_connections = every worker's pool + reserved.
6. Redis operations/s = the planned load × the commands Redis processed per request in the
   measured mix (when Redis was watched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keel.capacity.measure import Measurement
from keel.capacity.steps import Step, knee
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


def _knees(measurement: Measurement, kind: str, slo: float) -> dict[int, Step]:
    found = {}
    for series in measurement.series:
        if series.kind == kind:
            step = knee(series.steps, slo)
            if step is not None:
                found[series.scale] = step
    return found


def plan(measurement: Measurement, need: Need) -> Plan:
    if not 0 <= need.read_share <= 1:
        raise ValueError("the read share is between 0 and 1")
    if need.peak_rps <= 0 or need.headroom < 0 or need.p99_slo_ms <= 0:
        raise ValueError("the peak and the SLO are positive, the headroom at least 0")
    if need.workers_per_node is not None and (need.workers_per_node < 1 or measurement.unit != "workers"):
        raise ValueError("workers per node: at least 1, from a measurement over workers")
    unit = measurement.unit
    lines = [
        f"Measured {measurement.measured_at}: "
        + ", ".join(f"{n} {unit}: {what}" for n, what in sorted(measurement.targets.items()))
        + ".",
        f"Knees at p99 <= {need.p99_slo_ms:g} ms (the measurement's ramps judged again; at most 1 % failed):",
    ]
    reads = _knees(measurement, "read", need.p99_slo_ms)
    writes = _knees(measurement, "write", need.p99_slo_ms)
    mixes = _knees(measurement, "mix", need.p99_slo_ms)
    scales = sorted(set(reads) & set(writes))
    if not scales:
        raise ValueError(
            f"no scale has both a read and a write step within p99 <= {need.p99_slo_ms:g} ms: "
            "measure from a lower rate, or with a looser SLO"
        )
    capacity: dict[int, float] = {}
    for n in scales:
        capacity[n] = mixed(reads[n].throughput, writes[n].throughput, need.read_share)
        check = ""
        if n in mixes:
            check = f"; measured mix ({measurement.ramp.read_share:.0%} reads): {mixes[n].throughput:,.0f}/s"
        lines.append(
            f"  {n} {unit}: reads {reads[n].throughput:,.0f}/s (p99 {reads[n].p99_ms:.1f} ms), writes"
            f" {writes[n].throughput:,.0f}/s (p99 {writes[n].p99_ms:.1f} ms); at {need.read_share:.0%} reads"
            f" 1 / ({need.read_share:g}/{reads[n].throughput:,.0f} + {1 - need.read_share:g}/"
            f"{writes[n].throughput:,.0f}) = {capacity[n]:,.0f}/s{check}"
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
        lines.append(f"No USL fit: it needs 1 {unit} and at least one more among the scales measured.")
    required = need.peak_rps * (1 + need.headroom)
    lines.append(f"Need: {need.peak_rps:,.0f}/s × (1 + {need.headroom:g}) = {required:,.0f}/s.")

    def curve(n: int) -> float:
        if n in capacity:
            return capacity[n]
        if fit is None:
            raise ValueError(f"{n} {unit} were not measured, and there is no fit to reach them")
        return fit.throughput(n)

    nodes: int | None
    if unit == "workers":
        workers = need.workers_per_node or max(scales, key=curve)
        per_node = curve(workers)
        serving = math.ceil(required / per_node)
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
        at_knee = mixes.get(measured_near) or reads.get(measured_near)
    else:
        workers = 1
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
        per_worker = required / serving
        per_node = curve(serving) / serving
        at_knee = mixes.get(1) or reads.get(1)
    assert at_knee is not None  # scales holds only scales with a read knee
    in_flight = per_worker * at_knee.mean_ms / 1000
    pool = max(2, math.ceil(in_flight))
    total_workers = (nodes if nodes is not None else serving) * workers
    max_connections = total_workers * pool + need.reserved_connections
    lines.append(
        f"Pool per worker (KEEL_DB_POOL_MAX): {per_worker:,.0f}/s × {at_knee.mean_ms:.1f} ms mean at the"
        f" knee = {in_flight:.2f} in flight → {pool} (at least 2)."
    )
    lines.append(
        f"max_connections: {total_workers} workers × {pool}"
        f" + {need.reserved_connections} reserved = {max_connections}."
    )
    redis_ops = None
    watched = [
        step.redis_per_request for step in (mixes.get(workers), at_knee) if step and step.redis_per_request
    ]
    if watched:
        redis_ops = required * watched[0]
        lines.append(
            f"Redis: {required:,.0f}/s × {watched[0]:.2f} commands a request = {redis_ops:,.0f} ops/s."
        )
    else:
        lines.append("Redis: not watched in this measurement (measure with --redis-url).")
    return Plan(nodes, workers, pool, max_connections, redis_ops, per_node, lines)
