"""The activity store on Redis: the request log in capped streams, usage counts in hashes with
an expiry, the audit log in one stream.

The request log has ``REQUEST_LOG_SHARDS`` streams for orgs (an org's entries all go to the one
its id picks) and one for entries of no org, so reading one org's log reads one stream, and the
streams spread over a cluster's masters. A listing of several streams merges them newest first
by stream id (the request's own microsecond, see ``request_log_append.lua``), and a query that
filters reads a bounded number of entries per call: a page can come back short, with a cursor
to read on from.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from redis.exceptions import NoScriptError

from gateway.store.activity_base import (
    ActivityStore,
    BadCursor,
    PartlyWritten,
    anonymous_share,
    bucket_starts,
    usage_counts,
)
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

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore

T = TypeVar("T")
log = structlog.get_logger("gateway.store")

_FIELD = b"e"  # each stream entry has one field, the encoded entry
_SCAN_BUDGET = 5_000  # entries read at most per listing call
_BATCH = 200  # entries read from a stream at a time
# A stream id is its entry's own time in microseconds (not the milliseconds Redis would give),
# or, for an entry older than the stream's newest, the newest's: never before its time, but it
# may be after it. Entries written this much after their time (held through a store outage) are
# found without `until`.
_LATE_US = 5 * 60_000_000
_CURSOR = re.compile(r"([0-9]{1,2})\.([0-9]{1,18})-([0-9]{1,18})")


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


@dataclass
class _Stream(Generic[T]):
    """One stream being read newest first: what was read of it and not yet taken."""

    number: int
    name: str
    upper: str  # the XREVRANGE max of the next read
    lower: str
    buffer: list[tuple[tuple[int, int], bytes]] = field(default_factory=list)
    done: bool = False

    def head(self) -> tuple[tuple[int, int], int]:
        return self.buffer[0][0], self.number


def _format_cursor(stream: int, sid: tuple[int, int]) -> str:
    return f"{stream}.{sid[0]}-{sid[1]}"


def _parse_cursor(text: str, streams: int) -> tuple[int, tuple[int, int]]:
    match = _CURSOR.fullmatch(text)
    if match is None or int(match[1]) >= streams:
        raise BadCursor()
    return int(match[1]), (int(match[2]), int(match[3]))


class RedisActivityStore(ActivityStore):
    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._names = store.names
        self._retention = Retention(7 * 86400.0, 1_000_000, 400 * 86400.0)
        self._cap = 1_000_000 // REQUEST_LOG_STREAMS

    def set_retention(self, retention: Retention) -> None:
        """As configured; each stream keeps about its share of the most entries kept in all."""
        self._retention = retention
        self._cap = anonymous_share(retention.requests_max_entries)

    def _bucket_ttl(self, size: int) -> int:
        retention = self._retention
        max_age = retention.minute_buckets_max_age if size == 60 else retention.hour_buckets_max_age
        return int(max_age) + size

    def register_scripts(self) -> None:
        self._append = self._store.register_script("request_log_append.lua")

    async def startup(self) -> None:
        """Nothing to open: the store's own clients serve."""

    async def shutdown(self) -> None:
        """Nothing to close."""

    # -- the request log and its usage counts ----------------------------------------------

    async def append_requests(self, entries: Sequence[RequestEntry]) -> None:
        """The entries, then their usage counts. A stream that fails (its master away) fails
        alone: the entries of the others are kept and counted, and PartlyWritten names the
        rest, so that no entry is kept or counted twice when the caller tries again."""
        names = self._names
        by_stream: dict[str, list[RequestEntry]] = defaultdict(list)
        for entry in sorted(entries, key=lambda e: e.time):
            stream = names.request_log(names.request_log_shard(entry.org_id))
            by_stream[stream].append(entry)
        failed = await self._append_streams(by_stream)
        written = [e for stream, part in by_stream.items() if stream not in failed for e in part]
        try:
            await self._count_usage(written)
        except StoreError as exc:
            # Counting again would count twice what did arrive: these counts are lost.
            log.warning("request_usage_uncounted", entries=len(written), error=str(exc))
        if failed:
            unwritten = [e for stream in failed for e in by_stream[stream]]
            unwritten.sort(key=lambda e: e.time)
            error = next(iter(failed.values()))
            raise PartlyWritten(f"redis store: {error}", unwritten)

    async def _count_usage(self, entries: Sequence[RequestEntry]) -> None:
        names = self._names
        hashes: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for ((org_id, key_id), size, start), row in usage_counts(entries).items():
            name = names.usage(org_id, size, start)
            hashes[name]["" if key_id is None else f":{key_id}"] = row
        if not hashes:
            return

        def stage(pipe: Any) -> None:
            for name, fields in hashes.items():
                for suffix, (requests, errors, limited) in fields.items():
                    pipe.hincrby(name, "r" + suffix, requests)
                    if errors:
                        pipe.hincrby(name, "e" + suffix, errors)
                    if limited:
                        pipe.hincrby(name, "l" + suffix, limited)
                size = int(name.rsplit(":", 2)[1])
                pipe.expire(name, self._bucket_ttl(size))

        await self._store.pipelined(stage, once=True)

    async def _append_streams(
        self, by_stream: dict[str, list[RequestEntry]]
    ) -> dict[str, Exception]:
        """One script call per stream (request_log_append.lua adds its batch in time order),
        in one pipeline per server, all at once: a master that is away costs its own streams
        only. The streams that failed, with why."""
        args = {
            stream: [x for e in part for x in (_us(e.time), e.encode())]
            for stream, part in by_stream.items()
        }
        groups = self._store.by_server(list(by_stream))
        results = await asyncio.gather(*(self._append_group(group, args) for group in groups))
        return {stream: exc for failed in results for stream, exc in failed.items()}

    async def _append_group(
        self, streams: list[str], args: dict[str, list[bytes | int]]
    ) -> dict[str, Exception]:
        """The calls of one server. One that lost the script (a restart, a failover) ran none
        of them, and they are sent again once it is loaded; a call that fails adds nothing (a
        script's error comes before its first XADD)."""
        sha = self._append.sha
        pending = streams
        failed: dict[str, Exception] = {}
        for _ in range(2):

            def stage(pipe: Any, pending: list[str] = pending) -> None:
                for stream in pending:
                    pipe.evalsha(sha, 1, stream, self._cap, *args[stream])

            try:
                replies = await self._store.pipelined(stage, raise_on_error=False, once=True)
            except StoreError as exc:  # the server did not answer
                return failed | {stream: exc for stream in pending}
            missing = []
            for stream, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(stream)
                elif isinstance(reply, Exception):
                    failed[stream] = reply
            if not missing:
                return failed
            try:
                await self._store.load_scripts()
            except StoreError as exc:
                return failed | {stream: exc for stream in missing}
            pending = missing
        return failed | {stream: StoreError("the script could not be loaded") for stream in pending}

    async def query_requests(
        self, where: RequestFilter, limit: int, cursor: str | None = None
    ) -> Page[RequestEntry]:
        names = self._names
        if where.org_id is not None:
            numbers = [names.request_log_shard(where.org_id)]
        else:
            numbers = list(range(REQUEST_LOG_STREAMS))
        streams = [(n, names.request_log(n)) for n in numbers]
        return await self._scan(
            streams,
            REQUEST_LOG_STREAMS,
            RequestEntry.decode,
            where.matches,
            since=where.since,
            until=where.until,
            limit=limit,
            cursor=cursor,
            # Without a filter on the entries, no stream gives more than limit.
            batch=limit + 1 if _only_time(where) else _BATCH,
        )

    async def usage(
        self,
        bucket: Bucket,
        since: float,
        until: float,
        *,
        org_id: str | None = None,
        key_id: str | None = None,
    ) -> list[UsageBucket]:
        size = BUCKET_SECONDS[bucket]
        starts = bucket_starts(bucket, since, until)
        suffix = "" if key_id is None else f":{key_id}"
        fields = ["r" + suffix, "e" + suffix, "l" + suffix]
        names = [self._names.usage(org_id, size, start) for start in starts]
        replies = await self._store.pipelined(
            lambda pipe: [pipe.hmget(name, fields) for name in names]
        )
        return [
            UsageBucket(float(start), *(int(v) if v is not None else 0 for v in reply))
            for start, reply in zip(starts, replies, strict=True)
        ]

    # -- the audit log -----------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        name = self._names.audit()
        # The same script as the request log's, uncapped, as an acknowledged write: with
        # replica_acks, a failover does not lose it.
        await self._store.write_script(self._append, [name], ["", _us(entry.time), entry.encode()])

    async def query_audit(
        self, where: AuditFilter, limit: int, cursor: str | None = None
    ) -> Page[AuditEntry]:
        plain = where.org_id is None and where.action is None
        return await self._scan(
            [(0, self._names.audit())],
            1,
            AuditEntry.decode,
            where.matches,
            since=where.since,
            until=where.until,
            limit=limit,
            cursor=cursor,
            batch=limit + 1 if plain else _BATCH,
        )

    # -- retention ---------------------------------------------------------------------------

    async def trim(self, now: float, retention: Retention) -> None:
        names = self._names
        oldest_request = _us(now - retention.requests_max_age)
        oldest_audit = _us(now - retention.audit_max_age)

        cap = anonymous_share(retention.requests_max_entries)  # each stream's share

        def stage(pipe: Any) -> None:
            for n in range(REQUEST_LOG_STREAMS):
                stream = names.request_log(n)
                pipe.xtrim(stream, minid=oldest_request, approximate=False)
                # Exactly, here: the writes' MAXLEN ~ trims near the cap, cheaply.
                pipe.xtrim(stream, maxlen=cap, approximate=False)
            pipe.xtrim(names.audit(), minid=oldest_audit, approximate=False)

        await self._store.pipelined(stage)  # usage buckets go by their expiry

    # -- reading streams newest first ---------------------------------------------------------

    async def _scan(
        self,
        streams: Sequence[tuple[int, str]],
        count: int,
        decode: Callable[[bytes], T],
        matches: Callable[[T], bool],
        *,
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
        batch: int,
    ) -> Page[T]:
        """Merge the streams newest first (by id, then by stream number) and take what
        matches, from the cursor's place on; at most _SCAN_BUDGET entries read."""
        # Times before 1970 are below every stream id (ids are never negative).
        upper = "+" if until is None else str(max(0, _us(until) + _LATE_US))
        lower = "-" if since is None else str(_us(since))
        after: tuple[tuple[int, int], int] | None = None
        if cursor is not None:
            number, sid = _parse_cursor(cursor, count)
            after = (sid, number)
        readers: list[_Stream[T]] = []
        for number, name in streams:
            start = upper
            if after is not None:
                (ms, seq), cursor_stream = after
                # Past the cursor: ids below its id, and its id itself in lower-numbered streams.
                inclusive = number < cursor_stream
                if not inclusive and (ms, seq) == (0, 0):
                    continue  # nothing in this stream lies before the first id there is
                bound = f"{ms}-{seq}" if inclusive else f"({ms}-{seq}"
                # upper is a bare time (every seq of it): the cursor's bound is the tighter
                # one whenever the cursor lies at or before that time.
                start = bound if upper == "+" or ms <= int(upper) else upper
            readers.append(_Stream(number, name, start, lower))
        items: list[T] = []
        scanned = 0
        last: tuple[tuple[int, int], int] | None = None
        while len(items) < limit and scanned < _SCAN_BUDGET:
            await self._fill([r for r in readers if not r.buffer and not r.done], batch)
            live = [r for r in readers if r.buffer]
            if not live:
                return Page(items, None)
            reader = max(live, key=_Stream.head)
            sid, raw = reader.buffer.pop(0)
            last = (sid, reader.number)
            scanned += 1
            item = decode(raw)
            if matches(item):
                items.append(item)
        if last is None:
            return Page(items, None)
        if all(r.done and not r.buffer for r in readers):
            return Page(items, None)
        return Page(items, _format_cursor(last[1], last[0]))

    async def _fill(self, readers: list[_Stream[T]], batch: int) -> None:
        if not readers:
            return
        replies = await self._store.pipelined(
            lambda pipe: [pipe.xrevrange(r.name, r.upper, r.lower, count=batch) for r in readers]
        )
        for reader, reply in zip(readers, replies, strict=True):
            got = [(_stream_id(sid), fields[_FIELD]) for sid, fields in reply]
            reader.buffer = got
            if len(got) < batch:
                reader.done = True
            else:
                ms, seq = got[-1][0]
                reader.upper = f"({ms}-{seq}"


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def _only_time(where: RequestFilter) -> bool:
    return (
        where.org_id is None
        and where.key_id is None
        and where.route is None
        and where.status is None
        and where.status_class is None
    )
