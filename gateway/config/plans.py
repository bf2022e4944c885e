"""Plans and the limits they set: per key, per org, calendar quotas; the limiter's outage policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway.config.section import Section
from gateway.config.types import DAY, YEAR, DurationRange

# Counts of requests: far above any real limit, far below where a counter stops being exact.
MAX_REQUESTS = 1_000_000_000

MAX_QUOTA = 1_000_000_000_000


Algorithm = Literal["token_bucket", "sliding_window"]


class RateLimitConfig(Section):
    requests: int = Field(
        gt=0, le=MAX_REQUESTS, description="Sustained rate: this many requests per `per`."
    )
    per: Annotated[float, DurationRange(most=YEAR, positive=True)] = Field(
        description="The period of the sustained rate, e.g. 1m; at most 365d."
    )
    burst: int = Field(
        0, ge=0, le=MAX_REQUESTS, description="Extra requests a fresh bucket allows at once."
    )
    algorithm: Algorithm = Field(
        "token_bucket",
        description=(
            "token_bucket: `requests` per `per` sustained, plus `burst` at once; sliding_window:"
            " at most `requests` in any interval of length `per` (no burst)."
        ),
    )

    @model_validator(mode="after")
    def _window_has_no_burst(self) -> RateLimitConfig:
        if self.algorithm == "sliding_window" and self.burst:
            raise ValueError(
                f"burst: a sliding window allows `requests` in any `per` and no burst (got"
                f" {self.burst}); raise requests, or use algorithm: token_bucket"
            )
        return self

    @model_validator(mode="after")
    def _refills_in_time(self) -> RateLimitConfig:
        # The limiter keeps a bucket's state until it is full again: at most a year.
        refill = (self.requests + self.burst) * self.per / self.requests
        if refill > YEAR:
            raise ValueError(
                f"burst: {self.requests} + {self.burst} requests take {refill / DAY:g}d to"
                f" refill at {self.requests} per {self.per:g}s; at most 365d (lower burst or per)"
            )
        return self


class QuotaConfig(Section):
    requests: int = Field(
        gt=0, le=MAX_QUOTA, description="Requests per calendar period (at most 10**12)."
    )
    per: Literal["day", "month"] = Field(description="UTC day or UTC month.")


class PlanConfig(Section):
    api_keys: bool = Field(True, description="false: orgs on this plan get no API keys.")
    description: str | None = Field(None, description="Shown to people.")
    rate_limit: RateLimitConfig | None = Field(None, description="Limit of each key of the org.")
    org_rate_limit: RateLimitConfig | None = Field(
        None, description="Limit shared by all keys of the org."
    )
    quota: QuotaConfig | None = Field(
        None, description="Requests per UTC calendar day or month, for the whole org."
    )
    webhook_endpoints: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Most webhook endpoints an org may have (at most 10000); null: no cap.",
    )
    key_ttl: Annotated[float, DurationRange(most=10 * YEAR, positive=True)] | None = Field(
        None,
        description="How long a key lives: created without expiresAt, it expires this long"
        " after; a later expiresAt is refused; a rotation renews it (e.g. 90d; at most 3650d)."
        " null: keys live until revoked.",
    )

    def key_limit(self, override: Mapping[str, Any] | None) -> RateLimitConfig | None:
        """A key's own limit: its override (the admin API's rateLimit), else the plan's."""
        return RateLimitConfig.model_validate(override) if override else self.rate_limit

    def capacities(self) -> list[tuple[str, int]]:
        """The most each of the plan's limits lets through at once."""
        found = []
        if self.rate_limit is not None:
            found.append(("rate_limit", self.rate_limit.requests + self.rate_limit.burst))
        if self.org_rate_limit is not None:
            found.append(
                ("org_rate_limit", self.org_rate_limit.requests + self.org_rate_limit.burst)
            )
        if self.quota is not None:
            found.append(("quota", self.quota.requests))
        return found


class RateLimitsConfig(Section):
    on_store_error: Literal["open", "closed", "local"] = Field(
        "local",
        description=(
            "When the shared store is unreachable: open (no limits), closed (503), or local"
            " (each instance enforces the plan on its own)."
        ),
    )
