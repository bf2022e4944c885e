"""Webhooks: signing, delivery schedule and concurrency, retention, the endpoints API and stream."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.config.section import Section
from gateway.config.types import (
    DAY,
    FIELD_NAME,
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

# What an event type may be called, published or as an alias (fullmatch: no trailing "\n").
EVENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
# The events the gateway publishes itself; only these may be renamed by event_aliases, since a
# published event's type is already whatever its backend chose.
GATEWAY_EVENTS = ("webhook.ping", "key.created", "key.revoked", "key.rotated", "key.expiring")
# A name in the delivery body: plain enough for any receiver's JSON binding.
_MAX_LIFTED = 20

LegacyKey = Literal["secret", "decoded"]


def _field_name(value: str) -> str:
    if not isinstance(value, str) or not FIELD_NAME.fullmatch(value):
        raise ValueError(
            f"must be a field name of 1-64 letters, digits or _, not starting with a digit"
            f" (got {value!r})"
        )
    return value


FieldName = Annotated[str, AfterValidator(_field_name)]


class PayloadConfig(Section):
    """How the delivery body names our envelope's fields; the default is the envelope itself."""

    id: FieldName | None = Field(
        "id", description="The field holding the event id (also webhook-id); null: left out."
    )
    type: FieldName = Field("type", description="The field holding the event type.")
    timestamp: FieldName | None = Field(
        "timestamp", description="The field holding when the event was accepted; null: left out."
    )
    data: FieldName = Field("data", description="The field holding the published data.")
    lift: tuple[FieldName, ...] = Field(
        (),
        description="Fields of the published data (an object) moved out of it to the top level,"
        " after type; absent in the data: absent in the body.",
    )
    timestamp_format: Literal["iso", "iso_offset", "unix"] = Field(
        "iso",
        description="iso: 2026-06-12T10:30:00.000Z; iso_offset: 2026-06-12T10:30:00+00:00;"
        " unix: 1781260200 (seconds).",
    )

    @field_validator("type", "data", mode="before")
    @classmethod
    def _required(cls, value: object) -> object:
        if value is None:
            raise ValueError("must name a field (a body always carries the event's type and data)")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> PayloadConfig:
        if len(self.lift) > _MAX_LIFTED:
            raise ValueError(f"lift: at most {_MAX_LIFTED} fields")
        seen: dict[str, str] = {}
        named = [("id", self.id), ("type", self.type), ("timestamp", self.timestamp)]
        named += [("data", self.data), *(("lift", name) for name in self.lift)]
        for field, name in named:
            if name is None:
                continue
            if name in seen and seen[name] == field:
                raise ValueError(f"{field}: {name!r} is listed twice")
            if name in seen:
                raise ValueError(f"{field}: {name!r} is already the body's name for {seen[name]}")
            seen[name] = field
        return self


class WebhooksConfig(Section):
    signature: Literal["standard"] = Field(
        "standard", description="webhook-id, webhook-timestamp, webhook-signature: v1,<base64>."
    )
    legacy_header: str | None = Field(
        None,
        description="Also send this header with sha256=<hex HMAC of the body>,"
        " e.g. X-Finite-Signature.",
    )
    legacy_key: LegacyKey = Field(
        "secret",
        description="The legacy header's HMAC key. secret: the whsec_... string as shown, as"
        " receivers of such headers expect; decoded: the bytes it encodes, like"
        " webhook-signature (the behaviour before this option).",
    )
    payload: PayloadConfig = Field(
        default_factory=PayloadConfig,
        description="The delivery body's field names; the default is {id, type, timestamp, data}.",
    )
    event_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Names for the gateway's own events in the body, e.g. {webhook.ping: ping};"
        " endpoints may subscribe to either name.",
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

    @field_validator("event_aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        targets: dict[str, str] = {}
        for event, alias in value.items():
            if event not in GATEWAY_EVENTS:
                raise ValueError(
                    f"{event!r} is not an event of the gateway's own"
                    f" (those are {', '.join(GATEWAY_EVENTS)})"
                )
            if not EVENT_TYPE.fullmatch(alias):
                raise ValueError(
                    f"{event}: must be 1-100 letters, digits or _.:- starting with a letter or"
                    f" digit (got {alias!r})"
                )
            if alias in GATEWAY_EVENTS and alias != event:
                raise ValueError(f"{event}: {alias!r} is the name of another event")
            if alias in targets:
                raise ValueError(f"{event}: {alias!r} is already the alias of {targets[alias]}")
            targets[alias] = event
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
