"""The request log, usage and audit listings as the APIs read and show them: their query
parameters, checked with a message naming the one that is wrong, and their entries' views."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from multidict import MultiDict

from gateway.api.views import iso
from gateway.errors import BadRequest
from gateway.store.activity_models import (
    BUCKET_SECONDS,
    AuditEntry,
    AuditFilter,
    Bucket,
    RequestEntry,
    RequestFilter,
    UsageBucket,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# How many buckets one usage answer may hold: a day of minutes, 400 days of hours.
MAX_BUCKETS: dict[Bucket, int] = {"minute": 1440, "hour": 400 * 24}
# Without since, what a usage answer covers: the last hour of minutes, the last day of hours.
DEFAULT_SPAN: dict[Bucket, int] = {"minute": 60, "hour": 24}

_STATUS = re.compile(r"([1-5])(?:([0-9]{2})|xx)")
_TEXT = re.compile(r"[A-Za-z0-9_.:/{}*-]{1,200}")

REQUEST_PARAMS = frozenset({"org", "key", "route", "status", "since", "until", "limit", "cursor"})
USAGE_PARAMS = frozenset({"org", "key", "bucket", "since", "until"})
AUDIT_PARAMS = frozenset({"org", "action", "since", "until", "limit", "cursor"})


def check_params(query: Mapping[str, str], known: frozenset[str]) -> None:
    """Unknown or repeated parameters are refused: a typo must not widen a query silently."""
    seen: set[str] = set()
    for name, _ in query.items():  # a multidict's items (aiohttp's) repeat a repeated name
        if name not in known:
            shown_name = name[:40]
            raise BadRequest(
                f"{shown_name}: not a parameter here (known: {', '.join(sorted(known))})"
            )
        if name in seen:
            raise BadRequest(f"{name}: given more than once")
        seen.add(name)


def parse_query(raw: str) -> MultiDict[str]:
    """A raw query string as parameters (the data plane's requests keep theirs raw)."""
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, max_num_fields=20, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The query string could not be read.") from None
    return MultiDict(pairs)


def parse_time(query: Mapping[str, str], name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequest(f"{name}: must be an RFC 3339 time with a zone, e.g. 2027-01-01T00:00:00Z")
    return moment.timestamp()


def parse_limit(query: Mapping[str, str]) -> int:
    value = query.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    if len(value) > 4 or not value.isascii() or not value.isdigit():
        raise BadRequest(f"limit: must be a whole number from 1 to {MAX_LIMIT} (got {value[:8]!r})")
    if not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit: must be a whole number from 1 to {MAX_LIMIT} (got {value!r})")
    return int(value)


def parse_text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is not None and not _TEXT.fullmatch(value):
        raise BadRequest(f"{name}: not a valid {name} (got {value[:40]!r})")
    return value


def parse_status(query: Mapping[str, str]) -> tuple[int | None, int | None]:
    """``404`` -> (404, None); ``4xx`` -> (None, 4)."""
    value = query.get("status")
    if value is None:
        return None, None
    match = _STATUS.fullmatch(value.lower())
    if match is None:
        raise BadRequest(f"status: must be a code like 404 or a class like 4xx (got {value!r})")
    if match[2] is None:
        return None, int(match[1])
    return int(value), None


def time_range(query: Mapping[str, str]) -> tuple[float | None, float | None]:
    since, until = parse_time(query, "since"), parse_time(query, "until")
    if since is not None and until is not None and until <= since:
        raise BadRequest("until: must be after since")
    return since, until


def request_filter(query: Mapping[str, str], org_id: str | None) -> RequestFilter:
    """The filter of a request-log query; ``org_id`` as resolved by the caller."""
    status, status_class = parse_status(query)
    since, until = time_range(query)
    return RequestFilter(
        org_id=org_id,
        key_id=parse_text(query, "key"),
        route=parse_text(query, "route"),
        status=status,
        status_class=status_class,
        since=since,
        until=until,
    )


def audit_filter(query: Mapping[str, str], org_id: str | None) -> AuditFilter:
    since, until = time_range(query)
    return AuditFilter(org_id=org_id, action=parse_text(query, "action"), since=since, until=until)


def usage_window(query: Mapping[str, str], now: float) -> tuple[Bucket, float, float]:
    """The bucket size and [since, until) of a usage query, within MAX_BUCKETS."""
    raw = query.get("bucket", "minute")
    bucket: Bucket
    if raw == "minute":
        bucket = "minute"
    elif raw == "hour":
        bucket = "hour"
    else:
        raise BadRequest(f"bucket: must be minute or hour (got {raw[:20]!r})")
    size = BUCKET_SECONDS[bucket]
    since, until = time_range(query)
    if until is None:
        until = (now // size + 1) * size  # through the bucket now running
    if since is None:
        since = until - DEFAULT_SPAN[bucket] * size
    if since >= until:
        raise BadRequest("since: must be before until, or before now without until")
    if (until - since) / size > MAX_BUCKETS[bucket]:
        raise BadRequest(
            f"since: at most {MAX_BUCKETS[bucket]} {bucket} buckets at once; narrow the range"
        )
    return bucket, since, until


def request_view(entry: RequestEntry, *, internal: bool = True) -> dict[str, Any]:
    """An entry as the APIs show it; ``internal=False`` (keys reading their own log) leaves
    out the upstream target: the backends' addresses are the operator's, not the clients'."""
    return {
        "time": iso(entry.time),
        "requestId": entry.request_id,
        "orgId": entry.org_id,
        "keyId": entry.key_id,
        "method": entry.method,
        "path": entry.path,
        "route": entry.route,
        "status": entry.status,
        "durationMs": entry.duration_ms,
        "upstreamMs": entry.upstream_ms,
        "clientIp": entry.client_ip,
        "userAgent": entry.user_agent,
        "upstream": entry.upstream if internal else None,
        "rateLimited": entry.rate_limited,
        "idempotency": entry.idempotency,
        "clientId": entry.client_id,
    }


def usage_view(bucket: UsageBucket) -> dict[str, Any]:
    return {
        "start": iso(bucket.start),
        "requests": bucket.requests,
        "errors": bucket.errors,
        "rateLimited": bucket.rate_limited,
    }


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "time": iso(entry.time),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "orgId": entry.org_id,
        "before": entry.before,
        "after": entry.after,
    }
