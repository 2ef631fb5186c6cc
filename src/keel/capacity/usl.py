"""The Universal Scalability Law (Gunther): X(N) = λN / (1 + σ(N − 1) + κN(N − 1)), fitted to
measured throughputs at N workers or nodes.

The fit is the usual linearisation: with C(N) = X(N)/X(1), N/C(N) − 1 = σ(N − 1) + κN(N − 1), a
least-squares fit through the origin in σ and κ over the points with N > 1; λ is X(1). A
coefficient that comes out negative (measurement noise, or scaling better than linear) is held at
0 and the other refitted alone, so the curve always means what the law says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class UslFit:
    lam: float  # throughput of one worker or node (requests/s)
    sigma: float  # contention: the share of work that is serial
    kappa: float  # coherency: the cost of workers keeping each other consistent
    points: tuple[tuple[int, float], ...]

    def throughput(self, n: float) -> float:
        return self.lam * n / (1 + self.sigma * (n - 1) + self.kappa * n * (n - 1))

    def peak_n(self) -> float:
        """The N of greatest throughput: √((1 − σ)/κ); unbounded without coherency cost."""
        if self.kappa <= 0:
            return math.inf
        return math.sqrt(max(0.0, 1 - self.sigma) / self.kappa)

    def worst_error(self) -> float:
        """The largest relative distance between a measured point and the curve."""
        return max(abs(self.throughput(n) - x) / x for n, x in self.points)


def _one(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least squares of y = a·x through the origin, held at ≥ 0."""
    denominator = sum(x * x for x in xs)
    return max(0.0, sum(x * y for x, y in zip(xs, ys, strict=True)) / denominator) if denominator else 0.0


def fit_usl(points: Sequence[tuple[int, float]]) -> UslFit:
    """Fit σ and κ to (N, throughput) points; one of them must be N = 1, all throughputs > 0."""
    by_n = dict(points)
    if len(by_n) != len(points):
        raise ValueError("one throughput per N")
    if 1 not in by_n:
        raise ValueError("the USL fit needs the throughput at N = 1")
    if any(n < 1 for n in by_n) or any(x <= 0 for x in by_n.values()):
        raise ValueError("N must be ≥ 1 and every throughput > 0")
    lam = by_n[1]
    rest = sorted((n, x) for n, x in by_n.items() if n > 1)
    a = [float(n - 1) for n, _ in rest]
    b = [float(n * (n - 1)) for n, _ in rest]
    y = [n / (x / lam) - 1 for n, x in rest]
    sigma = kappa = 0.0
    if len(rest) == 1:
        sigma = _one(a, y)  # one point cannot separate the two: all of it is contention
    elif rest:
        saa = sum(v * v for v in a)
        sbb = sum(v * v for v in b)
        sab = sum(u * v for u, v in zip(a, b, strict=True))
        say = sum(u * v for u, v in zip(a, y, strict=True))
        sby = sum(u * v for u, v in zip(b, y, strict=True))
        determinant = saa * sbb - sab * sab
        sigma = (say * sbb - sby * sab) / determinant
        kappa = (sby * saa - say * sab) / determinant
        if sigma < 0:
            sigma, kappa = 0.0, _one(b, y)
        elif kappa < 0:
            sigma, kappa = _one(a, y), 0.0
    return UslFit(lam=lam, sigma=sigma, kappa=kappa, points=tuple(sorted(by_n.items())))
