"""Line plots as SVG, written by hand: a report needs no plotting library, renders in Markdown,
and diffs as text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

COLOURS = ("#4878a8", "#d08030", "#50a060", "#a04880", "#808080", "#c0a020")


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False
    markers: bool = True
    colour: str | None = None


def _ticks(high: float) -> list[float]:
    """About five round ticks from 0 to at least `high`."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    count = int(high // step) + (0 if high % step == 0 else 1)
    return [i * step for i in range(count + 1)]


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:g}"


def line_plot(
    title: str, x_label: str, y_label: str, lines: Sequence[Line], *, width: int = 640, height: int = 380
) -> str:
    legend_rows = (len(lines) + 2) // 3
    left, right, top, bottom = 70, 20, 40, 60 + 16 * legend_rows
    height += 16 * max(0, legend_rows - 2)  # room for every legend row, the plot kept its size
    xs = [x for line in lines for x, _ in line.points] or [1.0]
    ys = [y for line in lines for _, y in line.points] or [1.0]
    x_ticks, y_ticks = _ticks(max(xs)), _ticks(max(ys))
    x_high, y_high = x_ticks[-1], y_ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + x / x_high * plot_w

    def py(y: float) -> float:
        return top + plot_h - y / y_high * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-weight="bold">{escape(title)}</text>',
    ]
    for tick in x_ticks:
        parts.append(
            f'<line x1="{px(tick):.1f}" y1="{top}" x2="{px(tick):.1f}" y2="{top + plot_h}" stroke="#e4e4e4"/>'
            f'<text x="{px(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_label(tick)}</text>'
        )
    for tick in y_ticks:
        parts.append(
            f'<line x1="{left}" y1="{py(tick):.1f}" x2="{left + plot_w}" y2="{py(tick):.1f}"'
            ' stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">{_label(tick)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 36}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(16 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text>"
    )
    for index, line in enumerate(lines):
        colour = line.colour or COLOURS[index % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        if line.markers:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"/>' for x, y in line.points
            )
        legend_x = left + (index % 3) * 190
        legend_y = top + plot_h + 56 + (index // 3) * 16
        parts.append(
            f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 20}" y2="{legend_y - 4}"'
            f' stroke="{colour}"'
            f' stroke-width="2"{dash}/><text x="{legend_x + 26}" y="{legend_y}">{escape(line.label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
