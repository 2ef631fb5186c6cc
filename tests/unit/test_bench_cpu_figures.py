"""The server CPU per request figure of bench/rest_read.py: read from /proc/<pid>/stat, and its
ratio (baseline ÷ Keel) must move with the CPU each side spends."""

from __future__ import annotations

import pytest
from bench.read_figures import cpu_ratio, cpu_seconds, cpu_us_per_request

# A real line's shape: a command name with a space and a parenthesis in it, utime 250, stime 50.
_STAT = "4242 (keel (serve) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 99 0 0"


def test_cpu_seconds_reads_user_plus_system_time_after_the_command_name() -> None:
    assert cpu_seconds(_STAT, 100) == 3.0


def test_cpu_per_request_and_its_ratio() -> None:
    assert cpu_us_per_request(10.0, 10.5, 1000) == 500.0
    # Keel spending twice the baseline's CPU per request: 0.5x; half of it: 2x.
    assert cpu_ratio([800.0, 820.0, 780.0], [400.0, 410.0, 390.0]) == 0.5
    assert cpu_ratio([200.0], [400.0]) == 2.0
    with pytest.raises(ValueError, match="no requests"):
        cpu_us_per_request(1.0, 2.0, 0)
    with pytest.raises(ValueError, match="one Keel and one baseline"):
        cpu_ratio([1.0], [])
