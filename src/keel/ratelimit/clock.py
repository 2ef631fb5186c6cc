"""The rate limiters' clock: integer microseconds, for every limiter and the refusals remembered
in front of them (one module, so that no protocol reaches a concrete limiter to read the time)."""

from __future__ import annotations

import time


def monotonic_us() -> int:
    """Integer microseconds: `monotonic() * 1e6` is a float that loses the low bits as uptime
    grows, and GCRA must be exact (see `gcra`)."""
    return time.monotonic_ns() // 1000
