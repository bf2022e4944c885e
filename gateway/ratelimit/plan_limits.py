"""The limits a plan puts on an org and its keys, as ``Limit`` records: built alike for a
request (the rate_limit plugin) and for a look at where they stand (usage, the console)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import PlanConfig, RateLimitConfig
from gateway.ratelimit.policy import US, Limit, calendar_window
from gateway.ratelimit.window import granule_us


def prefix_of(key_prefix: str) -> str:
    """Where the limits' state is kept, under the store's key prefix."""
    return f"{key_prefix}:rl"


def org_tag(prefix: str, org_id: str) -> str:
    """The start of every limit key of an org (one hash tag: one slot on a cluster)."""
    return f"{prefix}:{{{org_id}}}"


def bucket(policy: str, key: str, config: RateLimitConfig) -> Limit:
    # The bucket's shape and algorithm are part of its state key: a changed limit (a plan
    # change, a per-key override set or removed) starts with a full bucket instead of inheriting
    # a debt measured in another rate, and no algorithm ever reads another's state. Quota
    # windows keep their count across changes: usage is usage.
    if config.algorithm == "sliding_window":
        per_us = max(1, round(config.per * US))
        return Limit(
            policy,
            f"{key}:sw:{config.requests}:{per_us}",
            "sliding",
            config.requests,
            per_us=per_us,
            granule_us=granule_us(per_us),
        )
    capacity = config.requests + config.burst
    interval_us = max(1, round(config.per * US / config.requests))
    return Limit(policy, f"{key}:{capacity}:{interval_us}", "gcra", capacity, interval_us)


def key_bucket(
    prefix: str, org_id: str, key_id: str, override: Mapping[str, Any] | None, plan: PlanConfig
) -> Limit | None:
    """The limit of one key: its own override, else its plan's per-key limit, if any."""
    config = plan.key_limit(override)
    if config is None:
        return None
    return bucket("key", f"{org_tag(prefix, org_id)}:key:{key_id}", config)


def org_bucket(prefix: str, org_id: str, plan: PlanConfig) -> Limit | None:
    if plan.org_rate_limit is None:
        return None
    return bucket("org", f"{org_tag(prefix, org_id)}:org", plan.org_rate_limit)


def quota_window(
    prefix: str, org_id: str, plan: PlanConfig, window: tuple[float, float, str]
) -> Limit | None:
    """The plan's quota in the calendar window given (see calendar_window)."""
    if plan.quota is None:
        return None
    start, end, label = window
    return Limit(
        "quota",
        f"{org_tag(prefix, org_id)}:quota:{label}",
        "window",
        plan.quota.requests,
        window_start_us=int(start * US),
        window_end_us=int(end * US),
    )


def plan_limits(
    prefix: str,
    org_id: str,
    plan: PlanConfig,
    now: float,
    *,
    key_id: str | None = None,
    override: Mapping[str, Any] | None = None,
) -> list[Limit]:
    """Every limit of the plan on the org (and on the key, when one is given), route limits
    aside: where they stand is what usage shows."""
    found = [
        key_bucket(prefix, org_id, key_id, override, plan) if key_id is not None else None,
        org_bucket(prefix, org_id, plan),
        quota_window(prefix, org_id, plan, calendar_window(plan.quota.per, now))
        if plan.quota is not None
        else None,
    ]
    return [limit for limit in found if limit is not None]
