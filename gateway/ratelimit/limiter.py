"""Decisions through the shared store, and what happens when it cannot be reached."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog

from gateway.breaker import CircuitBreaker
from gateway.errors import Unavailable
from gateway.observability.metrics import Metrics
from gateway.ratelimit.backends import LimiterError, LocalLimits, RedisLimits
from gateway.ratelimit.policy import US, Decision, Limit

log = structlog.get_logger("gateway.ratelimit")

OutageMode = Literal["open", "closed", "local"]


class RateLimiter:
    """Decides limits in the shared backend; on a store error, applies ``on_store_error``:

    - ``open``: no limits (the request passes, without RateLimit headers);
    - ``closed``: ``503 unavailable``;
    - ``local``: this instance enforces the plan alone, with its own counters.

    Either way the error is counted and the degraded gauge and /readyz say so. A call that
    timed out may still have been counted by Redis; the request is then decided again here.
    """

    RETRY_AFTER_ERROR = 1.0

    def __init__(
        self,
        shared: LocalLimits | RedisLimits,
        *,
        mode: OutageMode,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shared = shared
        self.mode = mode
        self.metrics = metrics
        self.clock = clock
        self.fallback = LocalLimits()
        self.degraded = False
        # After a store error the store is left alone for a second instead of making every
        # request wait for it.
        self._breaker = CircuitBreaker(self.RETRY_AFTER_ERROR, clock=clock)

    async def decide(self, limits: Sequence[Limit], cost: int) -> Decision | None:
        """The decision, or None when limits are off for now (``open`` during an outage)."""
        now_us = int(self.clock() * US)
        try:
            if not self._breaker.allow():
                raise LimiterError("the store failed a moment ago")
            try:
                decision = await self.shared.decide(limits, cost, now_us)
            except LimiterError:
                if self._breaker.failure():  # requests that failed together count once
                    self.metrics.rate_limit_store_errors.inc()
                raise
            self._breaker.success()
        except LimiterError as exc:
            if not self.degraded:
                self.degraded = True
                self.metrics.rate_limit_degraded.set(1)
                log.warning("rate_limit_store_unavailable", mode=self.mode, error=str(exc))
            if self.mode == "open":
                return None
            if self.mode == "closed":
                raise Unavailable(
                    "Rate limits cannot be checked right now; try again shortly.",
                    headers=[("Retry-After", "1")],
                ) from None
            decision = await self.fallback.decide(limits, cost, now_us)
        else:
            if self.degraded:
                self.degraded = False
                self.metrics.rate_limit_degraded.set(0)
                log.info("rate_limit_store_recovered")
        for outcome in decision.outcomes:
            self.metrics.count_decision(outcome.policy, outcome.allowed)
        return decision

    def state(self) -> dict[str, Any]:
        return {"on_store_error": self.mode, "degraded": self.degraded}
