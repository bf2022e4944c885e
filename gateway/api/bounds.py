"""What the APIs accept as durations, times and limits: bounded, refused before any write.

Every bound is here, so the API, its error messages and the README agree:

- a rotated key's ``grace`` and a webhook secret's ``overlap``: 0 to 30d;
- a key's ``expiresAt``: an RFC 3339 time with a zone, in the future, at most 3650d (10 years)
  ahead;
- a per-key ``rateLimit``: ``per`` 1s to 365d, ``requests`` 1 to 1,000,000,000, ``burst`` 0 to
  1,000,000,000 (0 with ``algorithm: sliding_window``), and a full bucket refills within 365d
  (the limiter counts in integer microseconds, exact in Lua doubles only up to 2**53, about 285
  years).

A value out of bounds is a 400 naming the field, e.g. ``grace: must be at most 30d (got '99d')``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
)

from gateway.config import MAX_REQUESTS, RateLimitConfig
from gateway.config.plans import Algorithm
from gateway.config.types import DAY, YEAR, DurationRange, format_duration
from gateway.config.validation import shown

MAX_GRACE = 30 * DAY
MAX_SECRET_OVERLAP = 30 * DAY
MAX_KEY_LIFETIME = 3650 * DAY
MIN_LIMIT_WINDOW = 1.0
MAX_LIMIT_WINDOW = YEAR

Grace = Annotated[float, DurationRange(most=MAX_GRACE)]
SecretOverlap = Annotated[float, DurationRange(most=MAX_SECRET_OVERLAP)]
LimitWindow = Annotated[float, DurationRange(least=MIN_LIMIT_WINDOW, most=MAX_LIMIT_WINDOW)]


def _time_text(value: Any) -> Any:
    # A number would be read as seconds or milliseconds by magnitude; RFC 3339 says which.
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 time like 2027-01-01T00:00:00Z (got {shown(value)})")
    return value


def _key_expiry(value: datetime, info: ValidationInfo) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must include a time zone, e.g. 2027-01-01T00:00:00Z")
    now = float((info.context or {}).get("now") or time.time())
    at = value.timestamp()
    if at <= now:
        raise ValueError(f"must be in the future (got {value.isoformat()!r})")
    if at > now + MAX_KEY_LIFETIME:
        raise ValueError(
            f"must be at most {format_duration(MAX_KEY_LIFETIME)} from now"
            f" (got {value.isoformat()!r})"
        )
    return value


KeyExpiry = Annotated[
    datetime,
    BeforeValidator(_time_text),
    AfterValidator(_key_expiry),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with a zone, in the future, at most 3650d ahead.",
        }
    ),
]


class RateLimitOverride(RateLimitConfig):
    """A key's own limit: the config's bounds (a year's refill at most), 1s windows at least.

    Whole numbers only: JSON's true or "5" is not a request count.
    """

    requests: StrictInt = Field(
        ge=1, le=MAX_REQUESTS, description="Sustained rate: this many requests per `per`."
    )
    per: LimitWindow = Field(description="The period of the sustained rate, 1s to 365d.")
    burst: StrictInt = Field(
        0, ge=0, le=MAX_REQUESTS, description="Extra requests a fresh bucket allows."
    )
    # Stored and shown only when it is not the default, so the overrides saved before there
    # was a choice read exactly like the ones saved since.
    algorithm: Algorithm = Field(
        "token_bucket",
        exclude_if=lambda value: value == "token_bucket",
        description="token_bucket (with burst) or sliding_window (any `per` holds at most"
        " `requests`; no burst).",
    )
