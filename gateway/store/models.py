"""What the store keeps: orgs and API keys, as immutable records."""

from __future__ import annotations

import secrets
import string
from dataclasses import asdict, dataclass, field, replace
from typing import Any

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def prefixed_id(prefix: str) -> str:
    """The prefix (``key_``, or as ids: configures it), then 20 random base62 characters
    (119 bits)."""
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(20))


def new_id(kind: str) -> str:
    """An id of one of the gateway's own kinds: ``wh_…``, ``evt_…``, ``aud_…``."""
    return prefixed_id(f"{kind}_")


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    slug: str
    name: str
    plan: str
    created_at: float
    # Free-form metadata ({"role": "sales-manager"}); its keys inherit what they do not set.
    attributes: dict[str, str] = field(default_factory=dict, hash=False)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Org:
        return cls(**record)

    def with_changes(self, **changes: Any) -> Org:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    org_id: str
    name: str
    scopes: tuple[str, ...]
    environment: str
    prefix: str  # shown to people: e.g. "fw_live_AbCd"
    last4: str
    key_hash: str  # SHA-256 or HMAC-SHA256 of the secret; the secret is never stored
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None
    allowed_ips: tuple[str, ...] = ()
    # Per-key overrides of the plan's limits, e.g. {"requests": 300, "per": 60, "burst": 50}.
    rate_limit: dict[str, Any] | None = field(default=None, hash=False)
    rotated_to: str | None = None  # the key that replaced this one, after a rotation
    # Free-form metadata; a name set here overrides the org's.
    attributes: dict[str, str] = field(default_factory=dict, hash=False)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["scopes"] = list(self.scopes)
        record["allowed_ips"] = list(self.allowed_ips)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ApiKey:
        data = dict(record)
        data["scopes"] = tuple(data.get("scopes") or ())
        data["allowed_ips"] = tuple(data.get("allowed_ips") or ())
        return cls(**data)

    def usable_at(self, now: float) -> bool:
        """Not revoked and not expired (a rotated key expires when its grace ends)."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at

    def with_changes(self, **changes: Any) -> ApiKey:
        return replace(self, **changes)
