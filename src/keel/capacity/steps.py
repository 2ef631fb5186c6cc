"""One step of an open-loop ramp, and the knee: the highest throughput within the latency SLO."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# A step with more failures than this is past the knee whatever its latency: a refusal is fast.
MAX_FAILED_SHARE = 0.01


@dataclass(frozen=True)
class Step:
    offered_rps: float  # what the ramp sent at (open loop: whatever the answers)
    seconds: float
    sent: int
    ok: int  # 2xx answers
    failed: int  # any other status, a socket error, or no answer in time
    p50_ms: float  # of the 2xx answers, from when each request was due to be sent
    p99_ms: float
    mean_ms: float
    server_cpu_us: float | None  # server CPU per request sent, when the servers' processes are known
    redis_commands: int | None = None  # commands Redis processed during the step, when it was watched
    failures: dict[str, int] = field(default_factory=dict)  # status code, or "socket"/"timeout", -> count
    # The p99 of every request sent, a failure slower than any answer (None: over 1 % failed).
    p99_all_ms: float | None = None
    waited_for_connection: int = 0  # requests that found every connection of the client busy
    redis_by_command: dict[str, int] = field(default_factory=dict)  # of `redis_commands`

    @property
    def throughput(self) -> float:
        """2xx answers per second."""
        return self.ok / self.seconds

    @property
    def failed_share(self) -> float:
        return self.failed / self.sent if self.sent else 1.0

    @property
    def redis_per_request(self) -> float | None:
        return self.redis_commands / self.sent if self.redis_commands is not None and self.sent else None

    def within(self, p99_slo_ms: float) -> bool:
        """At most 1 % failed, and the p99 of every request sent (failures the slowest) within
        the SLO."""
        return (
            self.sent > 0
            and self.failed_share <= MAX_FAILED_SHARE
            and self.p99_all_ms is not None
            and self.p99_all_ms <= p99_slo_ms
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def step_from_json(data: dict[str, Any]) -> Step:
    return Step(**data)


def knee(steps: Sequence[Step], p99_slo_ms: float) -> Step | None:
    """The step of greatest throughput among those within the SLO (`Step.within`); None when no
    step was."""
    within = [step for step in steps if step.within(p99_slo_ms)]
    return max(within, key=lambda step: step.throughput, default=None)


def ramp_ran_out(steps: Sequence[Step], p99_slo_ms: float) -> bool:
    """The ramp's last step was still within the SLO: its knee is a lower bound, past the ramp's
    top rate."""
    return bool(steps) and steps[-1].within(p99_slo_ms)


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of values sorted ascending."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-round(share * 1000) * len(sorted_values) // 1000))
    return sorted_values[min(rank, len(sorted_values)) - 1]
