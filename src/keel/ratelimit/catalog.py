"""Which plan applies to a caller and what an operation costs: the configuration of rate limits,
checked once at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keel.ratelimit.policy import DEFAULT_PLANS, EDGE_PLAN, Plan


@dataclass(frozen=True)
class RateLimitCatalog:
    plans: Mapping[str, Plan]
    default_plan: str
    anonymous_plan: str
    costs: Mapping[str, int]

    @classmethod
    def build(
        cls,
        *,
        plans: Mapping[str, Plan] | None = None,
        default_plan: str = "standard",
        anonymous_plan: str = "anonymous",
        costs: Mapping[str, int],
    ) -> RateLimitCatalog:
        """`costs`: units per operation name (`keel.admission.operations` holds the defaults),
        with one for `other`, the price of any name not listed. Refuses a configuration under
        which some request could never be admitted."""
        chosen = dict(plans or DEFAULT_PLANS)
        # Edges' keys have a plan of their own even where an operator configured only theirs:
        # without it, an edge would be held to one caller's quota for all of its callers.
        chosen.setdefault(EDGE_PLAN, DEFAULT_PLANS[EDGE_PLAN])
        catalog = cls(
            plans=chosen,
            default_plan=default_plan,
            anonymous_plan=anonymous_plan,
            costs=dict(costs),
        )
        if "other" not in catalog.costs:
            raise ValueError("rate-limit costs must price 'other', the operations not listed")
        for name in (default_plan, anonymous_plan):
            if name not in catalog.plans:
                raise ValueError(f"rate-limit plan {name!r} is not configured ({', '.join(catalog.plans)})")
        if any(cost < 1 for cost in catalog.costs.values()):
            raise ValueError("rate-limit costs must be positive")
        dearest = max(catalog.costs.values())
        for plan in catalog.plans.values():
            if plan.smallest_burst and plan.smallest_burst < dearest:
                raise ValueError(
                    f"plan {plan.name!r}: a burst of {plan.smallest_burst} can never admit an operation"
                    f" costing {dearest}; raise the burst or lower the cost"
                )
        return catalog

    def plan_named(self, name: str | None) -> Plan:
        """The key's plan; a key whose plan was removed from the configuration gets the default."""
        if name is None:
            return self.plans[self.anonymous_plan]
        return self.plans.get(name) or self.plans[self.default_plan]

    def cost_of(self, operation: str) -> int:
        return self.costs.get(operation) or self.costs["other"]
