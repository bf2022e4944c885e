"""rate_limit: per-key, per-org and per-route limits and calendar quotas, with standard headers."""

from __future__ import annotations

import hashlib
import math
from typing import ClassVar, Literal

from aiohttp import web
from pydantic import Field, model_validator

from gateway.config import GatewayConfig, GatewaySettings, PlanConfig, RateLimitConfig, RouteConfig
from gateway.config.registry import register
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from gateway.errors import GatewayError
from gateway.keys.keyring import Identity
from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.plan_limits import (
    bucket,
    key_bucket,
    org_bucket,
    org_tag,
    prefix_of,
    quota_window,
)
from gateway.ratelimit.policy import Decision, Limit, Outcome, calendar_window

BUCKETS_IDLE = 60.0  # seconds: a key's cached buckets outlive its last request by 1 to 2 of these
MAX_BUCKETS = 10_000  # keys whose buckets are cached per generation


class RouteLimitConfig(RateLimitConfig):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Names the policy: route:<name>."
    )
    scope: Literal["key", "org"] = Field("key", description="Counted per key or per org.")


class RateLimitRoute(RouteConfig):
    rate_limits: tuple[RouteLimitConfig, ...] = Field(
        (), description="Extra limits for this route only, e.g. a stricter one on an export."
    )

    @model_validator(mode="after")
    def _route_limits_need_auth(self) -> RateLimitRoute:
        if self.rate_limits and self.auth == "none":
            raise ValueError("rate_limits: limits count per key or org; they need auth")
        names = [limit.name for limit in self.rate_limits]
        if len(set(names)) != len(names):
            raise ValueError("rate_limits: each limit of a route needs its own name")
        return self


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"

    def __init__(self, outcome: Outcome) -> None:
        wait = max(1, math.ceil(outcome.retry_after))
        super().__init__(
            f"Rate limit {outcome.policy!r} exceeded: {outcome.limit} requests per"
            f" {math.ceil(outcome.window)} s. Retry in {wait} s.",
            headers=[("Retry-After", str(wait))],
        )


def rate_limit_headers(decision: Decision) -> list[tuple[str, str]]:
    """draft-ietf-httpapi-ratelimit-headers fields, and the X-RateLimit-* that clients know.

    A bucket of ``requests`` per ``per`` with ``burst`` is reported as its capacity
    ``q = requests + burst`` over ``w`` = the time to refill that capacity, which is the same
    sustained rate. ``t`` and X-RateLimit-Reset are seconds from now.
    """
    policy = ", ".join(
        f'"{o.policy}";q={o.limit};w={math.ceil(o.window)}' for o in decision.outcomes
    )
    current = ", ".join(
        f'"{o.policy}";r={o.remaining};t={math.ceil(o.reset)}' for o in decision.outcomes
    )
    headers = [("RateLimit-Policy", policy), ("RateLimit", current)]
    tightest = decision.tightest
    if tightest is not None:
        headers += [
            ("X-RateLimit-Limit", str(tightest.limit)),
            ("X-RateLimit-Remaining", str(tightest.remaining)),
            ("X-RateLimit-Reset", str(math.ceil(tightest.reset))),
        ]
    return headers


@register
class RateLimitPlugin:
    """Counts each authenticated request against every limit that applies, all at once."""

    name: ClassVar[str] = "rate_limit"
    priority: ClassVar[int] = 900  # after auth: limits are per key and org
    upstream_headers: ClassVar[tuple[str, ...]] = ()
    route_fields: ClassVar[type[RouteConfig] | None] = RateLimitRoute
    config_fields: ClassVar[type[GatewaySettings] | None] = None

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> RateLimitPlugin | None:
        """On every route that takes a key: the plan's limits apply even where the route sets
        none of its own."""
        if not route.credentials or services.limiter is None:
            return None
        return cls(services.limiter, config.plans, route, key_prefix=config.store.key_prefix)

    def __init__(
        self,
        limiter: RateLimiter,
        plans: dict[str, PlanConfig],
        route: RouteConfig,
        *,
        key_prefix: str,
    ) -> None:
        self.limiter = limiter
        self.plans = plans
        self.route_limits = route.rate_limits if isinstance(route, RateLimitRoute) else ()
        self.cost = route.cost
        self.prefix = prefix_of(key_prefix)
        # Each key's buckets, built once and kept while the key is in use, in two generations:
        # what went unused for a whole BUCKETS_IDLE leaves with the older one (revoked and idle
        # keys included), and a flood of keys starts a new generation early.
        self._buckets: dict[tuple[str, str, str], tuple[Limit, ...]] = {}
        self._older_buckets: dict[tuple[str, str, str], tuple[Limit, ...]] = {}
        self._buckets_until = 0.0
        # Route limits are this route's own, even where two routes name a limit alike.
        self._route_tag = hashlib.sha256(route.label.encode()).hexdigest()[:12]
        self._window: tuple[float, float, str] | None = None

    @property
    def cached_keys(self) -> int:
        """Keys whose buckets are cached now: those used within the last BUCKETS_IDLE or two."""
        return len(self._buckets) + len(self._older_buckets)

    async def startup(self) -> None:
        """The limiter is shared by every route and owned by the process."""

    async def shutdown(self) -> None:
        """Nothing of its own to release."""

    def limits(self, identity: Identity, now: float) -> list[Limit]:
        """Every limit this request counts against; keys share the org's hash tag."""
        org = identity.org
        plan = self.plans.get(org.plan)
        if plan is None:
            return []
        override = identity.rate_limit
        cache_key = (identity.caller, org.plan, repr(override))
        if now >= self._buckets_until or len(self._buckets) >= MAX_BUCKETS:
            self._older_buckets, self._buckets = self._buckets, {}
            self._buckets_until = now + BUCKETS_IDLE
        buckets = self._buckets.get(cache_key)
        if buckets is None:
            buckets = self._older_buckets.pop(cache_key, None)
            if buckets is None:
                buckets = self._build(identity, plan)
            self._buckets[cache_key] = buckets
        limits = list(buckets)
        if plan.quota is not None:
            window = self._calendar(plan.quota.per, now)
            quota = quota_window(self.prefix, org.id, plan, window)
            if quota is not None:
                limits.append(quota)
        return limits

    def _calendar(self, per: Literal["day", "month"], now: float) -> tuple[float, float, str]:
        window = self._window
        if window is None or not window[0] <= now < window[1] or window[2] != per:
            start, end, label = calendar_window(per, now)
            self._window = window = (start, end, label)
        return window[0], window[1], window[2]

    def _build(self, identity: Identity, plan: PlanConfig) -> tuple[Limit, ...]:
        org, caller = identity.org, identity.caller
        tag = org_tag(self.prefix, org.id)
        buckets = [
            limit
            for limit in (
                key_bucket(self.prefix, org.id, caller, identity.rate_limit, plan),
                org_bucket(self.prefix, org.id, plan),
            )
            if limit is not None
        ]
        for extra in self.route_limits:
            subject = caller if extra.scope == "key" else "org"
            key_name = f"{tag}:route:{self._route_tag}:{extra.name}:{subject}"
            buckets.append(bucket(f"route:{extra.name}", key_name, extra))
        return tuple(buckets)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        identity = ctx.identity
        if identity is None:
            return await call_next(ctx)
        limits = self.limits(identity, self.limiter.clock())
        if not limits:
            return await call_next(ctx)
        decision = await self.limiter.decide(limits, self.cost)
        if decision is None:  # on_store_error: open
            return await call_next(ctx)
        ctx.rate_limit = decision
        ctx.response_headers.extend(rate_limit_headers(decision))
        ctx.log_fields["rate_limited"] = not decision.allowed
        refused = decision.refused_by
        if refused is not None:
            ctx.log_fields["rate_limit_policy"] = refused.policy
            raise RateLimited(refused)
        return await call_next(ctx)
