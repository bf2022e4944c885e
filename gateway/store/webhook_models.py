"""What the webhook store keeps: endpoints, events, deliveries and their attempts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

EndpointStatus = Literal["enabled", "disabled"]
DeliveryStatus = Literal["pending", "succeeded", "dead"]
# A delivery of this type goes to the one endpoint it was made for, whatever its filter.
PING = "webhook.ping"


@dataclass(frozen=True, slots=True)
class Secret:
    value: str  # whsec_…: the HMAC key; it must be kept to sign, so it is stored
    expires_at: float | None = None  # set on the old secret when a rotation begins its overlap


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    org_id: str
    url: str
    events: tuple[str, ...]  # exact event types, or "*"
    secrets: tuple[Secret, ...]  # the newest first
    created_at: float
    status: EndpointStatus = "enabled"
    description: str = ""
    disabled_reason: str | None = None
    updated_at: float | None = None
    # Fields of the published data and the values wanted, e.g. {"module": ("leads",)}: an
    # event whose data has another value there (or none) is not for this endpoint.
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def wants(self, event_type: str) -> bool:
        return self.status == "enabled" and ("*" in self.events or event_type in self.events)

    def accepts(self, data: Any) -> bool:
        """Whether the event's data passes every filter (strings and integers compared as
        text: {"record_id": 42} passes ["42"])."""
        if not self.filters:
            return True
        if not isinstance(data, dict):
            return False
        for name, wanted in self.filters.items():
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, str | int):
                return False
            if str(value) not in wanted:
                return False
        return True

    def signing_secrets(self, now: float) -> list[str]:
        """The secrets that sign now: the current one, and an old one during its overlap."""
        return [s.value for s in self.secrets if s.expires_at is None or now < s.expires_at]

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["events"] = list(self.events)
        record["secrets"] = [asdict(s) for s in self.secrets]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Endpoint:
        data = dict(record)
        data["events"] = tuple(data["events"])
        data["secrets"] = tuple(Secret(**s) for s in data["secrets"])
        data["filters"] = {k: tuple(v) for k, v in (data.get("filters") or {}).items()}
        return cls(**data)

    def with_changes(self, **changes: Any) -> Endpoint:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Event:
    id: str  # evt_…; also the webhook-id of every delivery of it, so receivers can dedupe
    org_id: str
    type: str
    created_at: float
    # The body every attempt sends, made once as webhooks.payload shaped it when the event was
    # accepted (by default {"id", "type", "timestamp", "data"}).
    payload: bytes

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org_id": self.org_id,
            "type": self.type,
            "created_at": self.created_at,
            "payload": self.payload.decode(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        return cls(
            record["id"],
            record["org_id"],
            record["type"],
            float(record["created_at"]),
            record["payload"].encode(),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    at: float
    duration: float  # seconds
    status: int | None  # the HTTP status, None when no answer came
    success: bool
    error: str | None = None
    response: str = ""  # the first 1 KiB of the answer's body

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> Attempt:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one endpoint."""

    id: str
    endpoint_id: str
    org_id: str
    event_id: str
    event_type: str
    payload: bytes
    created_at: float
    status: DeliveryStatus = "pending"
    attempts: int = 0
    next_at: float = 0.0  # when the next attempt is due (pending only)
    lease_until: float = 0.0  # an instance holds it until then: an attempt in flight
    token: str = ""  # the holder's claim; its result counts only if it still holds it
    manual: bool = False  # a manual retry: one attempt, then back to dead on failure
    last_status: int | None = None
    updated_at: float | None = None
    history: tuple[Attempt, ...] = ()

    def in_flight(self, now: float) -> bool:
        return self.status == "pending" and self.token != "" and self.lease_until > now
