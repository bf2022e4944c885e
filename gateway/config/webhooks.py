"""Webhooks: signing, delivery schedule and concurrency, retention, the endpoints API and stream."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.section import Section
from gateway.config.types import (
    DAY,
    WEEK,
    YEAR,
    Duration,
    DurationRange,
    Interval,
    NumberRange,
    Timeout,
)
from gateway.http.paths import literal_path

_SIGNATURE_HEADER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")

_STANDARD_WEBHOOK_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature"}


class WebhooksConfig(Section):
    signature: Literal["standard"] = Field(
        "standard", description="webhook-id, webhook-timestamp, webhook-signature: v1,<base64>."
    )
    legacy_header: str | None = Field(
        None,
        description="Also send this header with sha256=<hex HMAC of the body>,"
        " e.g. X-Finite-Signature.",
    )
    allow_private_targets: bool = Field(
        False, description="Let endpoints reach private and loopback addresses (development only)."
    )
    secret_key: str | None = Field(
        None,
        description="Encrypts endpoint secrets in the store (AES-256-GCM); 32+ random characters,"
        " e.g. ${GATEWAY_WEBHOOK_KEY}. Never change it while endpoints use it.",
    )
    timeout: Timeout = Field(
        15.0, description="Longest an attempt may take, connect to answer; at most 1d."
    )
    retry_schedule: tuple[Annotated[float, DurationRange(most=WEEK, positive=True)], ...] = Field(
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0),
        description="The waits after each failed attempt (each over 0, at most 7d; 20 at"
        " most); after the last the delivery is dead.",
    )
    jitter: Annotated[float, NumberRange(0.0, 0.5)] = Field(
        0.1, description="Each wait is varied by up to this fraction (0 to 0.5) either way."
    )
    secret_overlap: Annotated[float, DurationRange(most=30 * DAY)] = Field(
        86400.0,
        description="How long the old secret also signs after a secret rotation; at most 30d.",
    )
    key_expiring_notice: Duration = Field(
        7 * 86400.0,
        description="key.expiring is sent this long before a key expires; at most 365d.",
    )
    concurrency: int = Field(32, ge=1, le=1024, description="Attempts in flight per process.")
    per_endpoint_concurrency: int = Field(
        4, ge=1, le=256, description="Attempts in flight to one endpoint, per process."
    )
    poll_interval: Interval = Field(
        0.5, description="How often each process looks for deliveries that are due; 10ms to 1d."
    )
    retention: Annotated[float, DurationRange(most=YEAR, positive=True)] = Field(
        30 * 86400.0,
        description="How long events and finished deliveries are kept; at most 365d.",
    )
    api_path: str | None = Field(
        "/v1/webhooks",
        description="Where keys with webhooks:write manage their org's endpoints; null: nowhere.",
    )
    stream: str | None = Field(
        "events",
        description="With the redis store: the stream (under store.key_prefix) backends may XADD"
        " events to; null: none.",
    )

    @model_validator(mode="after")
    def _kept_long_enough(self) -> WebhooksConfig:
        if self.retention < self.key_expiring_notice:
            # An event is remembered for retention; a key.expiring announced earlier than that
            # would be forgotten and announced again.
            raise ValueError(
                "retention must be at least key_expiring_notice"
                f" ({self.retention:g}s < {self.key_expiring_notice:g}s)"
            )
        return self

    @field_validator("legacy_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _SIGNATURE_HEADER.match(value) or value.lower() in _STANDARD_WEBHOOK_HEADERS:
            raise ValueError(f"must be a header name like X-Acme-Signature (got {value!r})")
        return value

    @field_validator("secret_key")
    @classmethod
    def _key_long_enough(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 32:
            raise ValueError("must be at least 32 characters")
        return value or None

    @field_validator("retry_schedule")
    @classmethod
    def _waits(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 20:
            raise ValueError("at most 20 retries")
        return value

    @field_validator("api_path")
    @classmethod
    def _api_path_is_literal(cls, value: str | None) -> str | None:
        return literal_path(value, "/v1/webhooks")

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", value):
            raise ValueError(f"must be 1-64 characters of [A-Za-z0-9_.:-] (got {value!r})")
        return value
