"""What the activity store keeps: request-log entries, usage buckets and audit entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import orjson

T = TypeVar("T")

Bucket = Literal["minute", "hour"]
BUCKET_SECONDS: dict[Bucket, int] = {"minute": 60, "hour": 3600}


class RequestEntry(NamedTuple):
    """One data-plane request as the request log keeps it.

    A tuple: the data plane makes one per request and the recorder thousands per batch, so it
    is as cheap to build and to encode (a JSON array in field order) as a record can be.

    SECURITY: never a secret, a query string or a body: the path is the path alone, and the
    key appears by its id.
    """

    time: float
    request_id: str
    org_id: str | None
    key_id: str | None
    method: str
    path: str
    route: str | None
    status: int
    duration_ms: float
    upstream_ms: float | None
    client_ip: str
    user_agent: str | None
    upstream: str | None
    rate_limited: bool | None
    idempotency: str | None
    # An access token's client (its key_id is None); entries written before there was one
    # have 15 fields and read this as None.
    client_id: str | None = None

    def encode(self) -> bytes:
        # A JSON array in field order: the most compact form both stores can keep.
        return orjson.dumps(tuple(self))  # orjson takes a tuple, not a subclass of one

    @classmethod
    def decode(cls, data: bytes | str) -> RequestEntry:
        return cls(*orjson.loads(data))


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """Which entries a query wants; None matches anything. ``until`` is exclusive."""

    org_id: str | None = None
    key_id: str | None = None
    route: str | None = None
    status: int | None = None  # one code, e.g. 404
    status_class: int | None = None  # 4 for 4xx
    since: float | None = None
    until: float | None = None

    def matches(self, entry: RequestEntry) -> bool:
        return (
            (self.org_id is None or entry.org_id == self.org_id)
            and (self.key_id is None or entry.key_id == self.key_id)
            and (self.route is None or entry.route == self.route)
            and (self.status is None or entry.status == self.status)
            and (self.status_class is None or entry.status // 100 == self.status_class)
            and (self.since is None or entry.time >= self.since)
            and (self.until is None or entry.time < self.until)
        )


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing, newest first; ``next_cursor`` reads the next (older) one."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class UsageBucket:
    start: float
    requests: int  # refused ones included
    errors: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: who (the admin token's name), what, on what, and the record before and
    after (views, never a secret)."""

    id: str
    time: float
    actor: str
    action: str  # org.create, key.revoke, config.reload, ...
    target: str | None
    org_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def encode(self) -> bytes:
        return orjson.dumps([getattr(self, name) for name in self.__slots__])

    @classmethod
    def decode(cls, data: bytes | str) -> AuditEntry:
        return cls(*orjson.loads(data))


@dataclass(frozen=True, slots=True)
class AuditFilter:
    org_id: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: AuditEntry) -> bool:
        return (
            (self.org_id is None or entry.org_id == self.org_id)
            and (self.action is None or entry.action == self.action)
            and (self.since is None or entry.time >= self.since)
            and (self.until is None or entry.time < self.until)
        )


@dataclass(frozen=True, slots=True)
class Retention:
    """How long, and how much, of each kind is kept."""

    requests_max_age: float
    requests_max_entries: int
    audit_max_age: float
    # Usage buckets: minutes for two days, hours for 400 days.
    minute_buckets_max_age: float = 2 * 86400.0
    hour_buckets_max_age: float = 400 * 86400.0
