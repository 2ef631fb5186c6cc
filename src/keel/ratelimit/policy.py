"""Rate-limit policies and the plans that group them.

A policy allows `quota` units per `window_seconds`, of which up to `burst` may be spent at once
by a client that has been idle. In GCRA terms the emission interval is `window / quota` and the
delay-variation tolerance is `burst` emission intervals, so over any window a client gets at
most `quota + burst` units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MICROSECONDS = 1_000_000


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    quota: int
    window_seconds: float
    burst: int
    shadow: bool = False  # decide and report, never reject

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"policy name {self.name!r}: letters, digits, '-' and '_' only")
        if self.quota < 1 or self.window_seconds <= 0 or self.burst < 1:
            raise ValueError(f"policy {self.name!r}: quota, window and burst must be positive")

    @property
    def emission_interval_us(self) -> float:
        """Time for one unit of quota to come back."""
        return self.window_seconds * MICROSECONDS / self.quota

    @property
    def tolerance_us(self) -> float:
        return self.emission_interval_us * self.burst

    def divided(self, parts: int) -> Policy:
        """This policy's share on one of `parts` nodes that decide without a shared store."""
        if parts <= 1:
            return self
        return Policy(
            self.name,
            quota=max(1, self.quota // parts),
            window_seconds=self.window_seconds,
            burst=max(1, self.burst // parts),
            shadow=self.shadow,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """The policies that apply together to each client on this plan."""

    name: str
    policies: tuple[Policy, ...]
    concurrency: int  # requests in flight at once, per client and process
    policy_header: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"plan {self.name!r}: policy names must be unique")
        if self.concurrency < 1:
            raise ValueError(f"plan {self.name!r}: concurrency must be positive")
        from keel.ratelimit.headers import format_policy_header

        object.__setattr__(self, "policy_header", format_policy_header(self))

    @property
    def smallest_burst(self) -> int:
        enforced = [p.burst for p in self.policies if not p.shadow]
        return min(enforced, default=0)

    def divided(self, parts: int) -> Plan:
        if parts <= 1:
            return self
        return Plan(self.name, tuple(p.divided(parts) for p in self.policies), self.concurrency)


DEFAULT_PLANS: dict[str, Plan] = {
    plan.name: plan
    for plan in (
        Plan(
            "anonymous",
            (Policy("burst", quota=10, window_seconds=1, burst=20), Policy("hourly", 1000, 3600, 200)),
            concurrency=5,
        ),
        Plan(
            "free",
            (Policy("burst", quota=20, window_seconds=1, burst=40), Policy("hourly", 5000, 3600, 1000)),
            concurrency=10,
        ),
        Plan(
            "standard",
            (
                Policy("burst", quota=100, window_seconds=1, burst=200),
                Policy("hourly", 100_000, 3600, 10_000),
            ),
            concurrency=20,
        ),
        Plan(
            "partner",
            (
                Policy("burst", quota=500, window_seconds=1, burst=1000),
                Policy("hourly", 1_000_000, 3600, 50_000),
            ),
            concurrency=100,
        ),
    )
}
