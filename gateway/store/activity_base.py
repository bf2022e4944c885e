"""The activity part of the store interface: the request log, usage counts and the audit log.

Both backends implement it alike and pass one contract suite. Listings are newest first and
read page by page with an opaque cursor; a cursor is only ever read by the store that made it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence

from gateway.errors import BadRequest
from gateway.store.activity_models import (
    BUCKET_SECONDS,
    AuditEntry,
    AuditFilter,
    Bucket,
    Page,
    RequestEntry,
    RequestFilter,
    Retention,
    UsageBucket,
)
from gateway.store.base import StoreError
from gateway.store.redis_keyspace import REQUEST_LOG_STREAMS

# What usage is counted for: every request (None, None), an org's (org, None), a key's (org, key).
Scope = tuple[str | None, str | None]


def usage_counts(
    entries: Sequence[RequestEntry],
) -> dict[tuple[Scope, int, int], list[int]]:
    """(scope, bucket size, bucket start) -> [requests, errors, rate limited] of a batch."""
    # First by (org, key, minute): one small step per entry (a batch is thousands of them);
    # then each such count into its scopes and both bucket sizes (a batch has few).
    minutes: dict[tuple[str | None, str | None, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for entry in entries:
        row = minutes[(entry.org_id, entry.key_id, int(entry.time // 60) * 60)]
        row[0] += 1
        status = entry.status  # an error: any 4xx or 5xx but 429, which is counted apart
        if status == 429:
            row[2] += 1
        elif status >= 400:
            row[1] += 1
    counts: dict[tuple[Scope, int, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for (org_id, key_id, minute), (requests, errors, limited) in minutes.items():
        scopes: list[Scope] = [(None, None)]
        if org_id is not None:
            scopes.append((org_id, None))
            if key_id is not None:
                scopes.append((org_id, key_id))
        for size in BUCKET_SECONDS.values():
            start = minute // size * size
            for scope in scopes:
                total = counts[(scope, size, start)]
                total[0] += requests
                total[1] += errors
                total[2] += limited
    return counts


def anonymous_share(max_entries: int) -> int:
    """How many entries of no org are kept at most: one stream's share on Redis (which keeps
    these in a stream beside those of orgs, each capped at this), the same on SQLite."""
    return max(1, max_entries // REQUEST_LOG_STREAMS)


def bucket_starts(bucket: Bucket, since: float, until: float) -> list[int]:
    """The starts of the buckets in [since, until)."""
    size = BUCKET_SECONDS[bucket]
    first = -(-int(since) // size) * size  # the first start at or after since
    return list(range(first, int(-(-until // 1)), size))


class PartlyWritten(StoreError):
    """The store kept part of a batch: ``unwritten`` is the rest, to send again (the part it
    kept must not be, or it would be kept twice)."""

    def __init__(self, message: str, unwritten: Sequence[RequestEntry]) -> None:
        super().__init__(message)
        self.unwritten = list(unwritten)


class BadCursor(BadRequest):
    def __init__(self) -> None:
        super().__init__("cursor: not a cursor this listing gave out")


class ActivityStore(ABC):
    @abstractmethod
    async def startup(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    async def append_requests(self, entries: Sequence[RequestEntry]) -> None:
        """Keep the entries and count them in the usage buckets (per org, per key and in all)."""

    @abstractmethod
    async def query_requests(
        self, where: RequestFilter, limit: int, cursor: str | None = None
    ) -> Page[RequestEntry]:
        """Up to ``limit`` entries that match, newest first, older than the cursor's place.

        A page may hold fewer than ``limit`` entries and still have a next cursor: a store that
        must scan for matches stops after a bounded amount of reading, and says where to go on.
        """

    @abstractmethod
    async def usage(
        self,
        bucket: Bucket,
        since: float,
        until: float,
        *,
        org_id: str | None = None,
        key_id: str | None = None,
    ) -> list[UsageBucket]:
        """Every bucket whose start lies in [since, until), oldest first, empty ones as zeros.
        key_id needs org_id (a key's counts live with its org's)."""

    @abstractmethod
    async def append_audit(self, entry: AuditEntry) -> None:
        """Keep the entry before the caller answers: an action is never unrecorded."""

    @abstractmethod
    async def query_audit(
        self, where: AuditFilter, limit: int, cursor: str | None = None
    ) -> Page[AuditEntry]:
        """Like query_requests, for the audit log."""

    @abstractmethod
    async def trim(self, now: float, retention: Retention) -> None:
        """Forget what retention no longer keeps."""
