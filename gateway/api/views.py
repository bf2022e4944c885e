"""Orgs and keys as the APIs show them (times in RFC 3339), and the 404 for what is not there."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.errors import GatewayError
from gateway.store import ApiKey, Org, Store

log = structlog.get_logger("gateway.admin")


class NotFound(GatewayError):
    status, code = 404, "not_found"


async def find_org(store: Store, ref: str) -> Org:
    """The org with this id or slug, or 404."""
    org = await store.get_org(ref)
    if org is None:
        raise NotFound(f"No org {ref!r}.")
    return org


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC, to the millisecond. Never raises: an endpoint must not go down over one
    odd stored time (older versions could store a key expiry in the year 273792727), so a time
    beyond what a datetime can hold is clamped to year 1 or 9999, and a non-number is null."""
    if ts is None:
        return None
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        valid = isinstance(ts, int | float) and not math.isnan(ts)
        log.warning(
            "stored_time_out_of_range", value=repr(ts), shown="clamped" if valid else "null"
        )
        if not valid:
            return None
        moment = _LATEST if ts > 0 else _EARLIEST
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def org_view(org: Org) -> dict[str, Any]:
    return {
        "id": org.id,
        "slug": org.slug,
        "name": org.name,
        "plan": org.plan,
        "createdAt": iso(org.created_at),
        "attributes": dict(org.attributes),
    }


def key_view(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": key.id}
    if secret is not None:
        view["secret"] = secret  # SECURITY: only in the answer to create and rotate
    view.update(
        {
            "name": key.name,
            "scopes": list(key.scopes),
            "environment": key.environment,
            "orgId": key.org_id,
            "prefix": key.prefix,
            "last4": key.last4,
            "allowedIps": list(key.allowed_ips),
            "createdAt": iso(key.created_at),
            "expiresAt": iso(key.expires_at),
            "lastUsedAt": iso(key.last_used_at),
            "revokedAt": iso(key.revoked_at),
            "rotatedTo": key.rotated_to,
            "rateLimit": key.rate_limit,
            "attributes": dict(key.attributes),
        }
    )
    return view
