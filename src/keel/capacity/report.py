"""A measurement written out: its JSON (what `keel capacity plan` reads), a Markdown report, and
SVG plots beside it (throughput and p50/p99 against offered load per ramp; the USL fit of each
kind's knees with the measured points)."""

from __future__ import annotations

import json
from pathlib import Path

from keel.capacity.measure import STEPS_PAST_KNEE, Measurement, Series, counted
from keel.capacity.plots import Line, line_plot
from keel.capacity.steps import Step, knee, ramp_ran_out
from keel.capacity.usl import UslFit, fit_usl


def _ramp_plots(measurement: Measurement, kind: str) -> tuple[str, str]:
    series = [s for s in measurement.series if s.kind == kind]
    unit = measurement.unit
    throughput = [
        Line(counted(s.scale, unit), [(step.offered_rps, step.throughput) for step in s.steps])
        for s in series
    ]
    top = max((step.offered_rps for s in series for step in s.steps), default=1.0)
    throughput.append(Line("offered", [(0.0, 0.0), (top, top)], dashed=True, markers=False, colour="#bbbbbb"))
    latency: list[Line] = []
    for index, s in enumerate(series):
        colour = ("#4878a8", "#d08030", "#50a060", "#a04880")[index % 4]
        latency.append(
            Line(
                f"{counted(s.scale, unit)} p99",
                [(st.offered_rps, st.p99_ms) for st in s.steps],
                colour=colour,
            )
        )
        latency.append(
            Line(
                f"{counted(s.scale, unit)} p50",
                [(st.offered_rps, st.p50_ms) for st in s.steps],
                dashed=True,
                colour=colour,
            )
        )
    slo = measurement.ramp.p99_slo_ms
    latency.append(
        Line(f"SLO {slo:g} ms", [(0.0, slo), (top, slo)], markers=False, colour="#cc3333", dashed=True)
    )
    return (
        line_plot(f"{kind}: answered against offered", "offered requests/s", "2xx answers/s", throughput),
        line_plot(f"{kind}: latency against offered", "offered requests/s", "ms (from when due)", latency),
    )


def usl_fits(measurement: Measurement) -> dict[str, UslFit]:
    fits = {}
    for kind in measurement.ramp.kinds:
        knees = [
            (s.scale, knee(s.steps, measurement.ramp.p99_slo_ms))
            for s in measurement.series
            if s.kind == kind
        ]
        points = [(scale, step.throughput) for scale, step in knees if step is not None]
        if len(points) > 1 and any(scale == 1 for scale, _ in points):
            fits[kind] = fit_usl(points)
    return fits


def _usl_plot(measurement: Measurement, fits: dict[str, UslFit]) -> str:
    lines: list[Line] = []
    top = max(measurement.scales())
    for index, (kind, fit) in enumerate(fits.items()):
        colour = ("#4878a8", "#d08030", "#50a060")[index % 3]
        curve = [(n / 10, fit.throughput(n / 10)) for n in range(10, top * 20 + 1)]
        lines.append(Line(f"{kind} fit", curve, markers=False, colour=colour))
        lines.append(Line(f"{kind} measured", list(fit.points), colour=colour, dashed=True))
    unit = measurement.unit
    return line_plot(f"Knee throughput against {unit} (USL)", unit, "requests/s at the knee", lines)


def _failures(step: Step) -> str:
    if not step.failed:
        return "0"
    return (
        f"{step.failed:,} (" + ", ".join(f"{what}: {count:,}" for what, count in step.failures.items()) + ")"
    )


def _table(measurement: Measurement, series: Series) -> list[str]:
    slo = measurement.ramp.p99_slo_ms
    best = knee(series.steps, slo)
    rows = [
        f"**{series.kind}, {counted(series.scale, measurement.unit)}**: knee "
        + (f"{best.throughput:,.0f}/s (offered {best.offered_rps:,.0f}/s)" if best else "none within the SLO")
        + (
            " or more: the ramp's last step was still within the SLO (raise --max-rps)"
            if ramp_ran_out(series.steps, slo)
            else ""
        ),
        "",
        "| offered/s | answered 2xx/s | failed | p50 ms (2xx) | p99 ms (2xx) | p99 ms (all sent) | waited for"
        " a connection | server CPU µs/req | Redis cmds/req | within SLO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step in series.steps:
        cpu = f"{step.server_cpu_us:,.0f}" if step.server_cpu_us is not None else "n/a"
        redis = f"{step.redis_per_request:.2f}" if step.redis_per_request is not None else "n/a"
        p99_all = f"{step.p99_all_ms:.1f}" if step.p99_all_ms is not None else "over 1 % failed"
        rows.append(
            f"| {step.offered_rps:,.0f} | {step.throughput:,.0f} | {_failures(step)} of {step.sent:,} |"
            f" {step.p50_ms:.1f} | {step.p99_ms:.1f} | {p99_all} | {step.waited_for_connection:,} |"
            f" {cpu} | {redis} |"
            f" {'yes' if step.within(slo) else 'no'} |"
        )
    if best is not None and best.redis_by_command and best.sent:
        calls = sorted(best.redis_by_command.items(), key=lambda item: -item[1])
        each = ", ".join(f"`{name}` {count / best.sent:.2f}" for name, count in calls)
        rows += ["", f"Redis commands a request at the knee, by command: {each}."]
    return [*rows, ""]


def write_report(
    measurement: Measurement, base: Path, command: str, partial: str | None = None
) -> list[Path]:
    """`<base>.json`, `<base>.md` and `<base>-*.svg`; the paths written. `partial`: why the
    measurement stopped short, said at the report's top."""
    base.parent.mkdir(parents=True, exist_ok=True)
    written = [base.with_name(base.name + ".json"), base.with_name(base.name + ".md")]
    written[0].write_text(json.dumps(measurement.as_json(), indent=2) + "\n")
    ramp = measurement.ramp
    lines = [
        f"# Capacity of {', '.join(measurement.targets.values())} ({measurement.measured_at[:10]})",
        "",
        f"Command: `{command}`",
        "",
        *([f"**Partial: the measurement stopped short ({partial}).**", ""] if partial else []),
        f"Measured {measurement.measured_at} on a host of {measurement.cores} cores. Open-loop ramps"
        f" (Poisson arrivals) from {ramp.start_rps:g}/s in steps of {ramp.step_rps:g}/s to at most"
        f" {ramp.max_rps:g}/s, {ramp.step_seconds:g} s a step, {ramp.connections} connections at most;"
        f" a ramp stops after {STEPS_PAST_KNEE} steps in a row past the SLO. The knee is the step of"
        f" greatest 2xx throughput with at most 1 % failed and the p99 of every request sent (a failure"
        f" the slowest) <= {ramp.p99_slo_ms:g} ms. Latency, and each request's 10 s timeout, count"
        " from when it was due to be sent; a step's throughput is over the time 99 % of its answers"
        " took. Reads: `GET /v1/profiles/{{id}}`; writes: a merge-patch of"
        f" `display_name`; the mix: {ramp.read_share:.0%} reads; over {ramp.profiles} profiles made for the"
        " measurement and deleted after it.",
        "",
        f"The client (this process) used {measurement.client_cpu_seconds:,.1f} s of CPU in all; on a host it"
        " shares with the servers, that CPU is not theirs, and a client short of CPU sends late, which"
        " shows as latency.",
        "",
    ]
    for kind in ramp.kinds:
        throughput, latency = _ramp_plots(measurement, kind)
        for name, svg in ((f"{kind}-throughput", throughput), (f"{kind}-latency", latency)):
            path = base.with_name(f"{base.name}-{name}.svg")
            path.write_text(svg)
            written.append(path)
            lines.append(f"![{name}]({path.name})")
        lines.append("")
        for series in measurement.series:
            if series.kind == kind:
                lines += _table(measurement, series)
    fits = usl_fits(measurement)
    if fits:
        path = base.with_name(f"{base.name}-usl.svg")
        path.write_text(_usl_plot(measurement, fits))
        written.append(path)
        lines += [f"## Universal Scalability Law over {measurement.unit}", "", f"![usl]({path.name})", ""]
        lines += [
            "| kind | λ (1 unit)/s | σ | κ | peak at N | worst point off the curve |",
            "|---|---|---|---|---|---|",
        ]
        for kind, fit in fits.items():
            peak = fit.peak_n()
            lines.append(
                f"| {kind} | {fit.lam:,.0f} | {fit.sigma:.4f} | {fit.kappa:.4f} |"
                f" {'∞' if peak == float('inf') else f'{peak:.2f}'} | {fit.worst_error():.1%} |"
            )
        lines.append("")
    written[1].write_text("\n".join(lines))
    return written
