"""The ``limits`` object keys are shown (``/v1/keys``, ``/v1/webhooks``): their plan's numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import PlanConfig, RateLimitConfig


def _per_minute(limit: RateLimitConfig | None) -> float | int | None:
    if limit is None:
        return None
    rate = limit.requests * 60 / limit.per
    return int(rate) if rate.is_integer() else round(rate, 6)


def limits_view(plan: PlanConfig | None, override: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a key may do, as numbers (null where its plan sets no such limit): the sustained
    rate of its own limit (its override, else its plan's) and its org's, scaled to a minute;
    the burst on top; the org's quota and its period; the org's webhook endpoint cap."""
    if plan is None:  # an org on a plan a reload removed: nothing to promise
        plan = PlanConfig()
    key_limit = plan.key_limit(override)
    return {
        "requestsPerMinute": _per_minute(key_limit),
        "burst": None if key_limit is None else key_limit.burst,
        "orgRequestsPerMinute": _per_minute(plan.org_rate_limit),
        "quota": None if plan.quota is None else plan.quota.requests,
        "quotaPeriod": None if plan.quota is None else plan.quota.per,
        "webhookEndpoints": plan.webhook_endpoints,
    }
