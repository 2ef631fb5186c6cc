"""Nearest-rank percentiles: exact on the samples taken, no interpolation, no numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The smallest value with at least `q` percent (0 < q ≤ 100) of `values` at or below it; NaN
    for no values, so that a check on it fails rather than passes on nothing."""
    if not 0 < q <= 100:
        raise ValueError(f"q is a percentage in (0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
