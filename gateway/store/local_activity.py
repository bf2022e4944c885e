"""The activity store on SQLite: the request log, usage counts and the audit log, in the
local store's file, on a connection and thread of their own (the data plane's store calls never
queue behind a batch of log entries or an operator's query)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.store.activity_base import (
    ActivityStore,
    BadCursor,
    Scope,
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

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    org_id TEXT,
    key_id TEXT,
    route TEXT,
    status INTEGER NOT NULL,
    entry BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS request_log_time ON request_log (time);
CREATE INDEX IF NOT EXISTS request_log_org ON request_log (org_id, seq);
CREATE INDEX IF NOT EXISTS request_log_key ON request_log (key_id, seq);
CREATE TABLE IF NOT EXISTS usage (
    scope TEXT NOT NULL,  -- '' (every request), 'org:<id>' or 'key:<id>'
    size INTEGER NOT NULL,  -- the bucket's length in seconds: 60 or 3600
    start INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    PRIMARY KEY (scope, size, start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_age ON usage (size, start);
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    org_id TEXT,
    action TEXT NOT NULL,
    entry BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time);
"""

_CURSOR = re.compile(r"[1-9][0-9]{0,17}")  # below 2**63: SQLite's integers


def _scope_text(scope: Scope) -> str:
    org_id, key_id = scope
    return f"key:{key_id}" if key_id else f"org:{org_id}" if org_id else ""


def _cursor(text: str | None) -> int | None:
    if text is None:
        return None
    if not _CURSOR.fullmatch(text):
        raise BadCursor()
    return int(text)


class LocalActivityStore(ActivityStore):
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-activity")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise StoreError("the local activity store is not open")
            try:
                with self._db:  # one transaction: committed, or rolled back on an error
                    return fn(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"local store: {exc}") from exc

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except RuntimeError as exc:  # the executor is shut down: the store is closed
            raise StoreError(f"local store: {exc}") from exc

    async def startup(self) -> None:
        def open_db() -> None:
            # The file exists by now, made owner-only by the local store that opened it first.
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an audit entry outlives a crash
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            self._db = db

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, open_db)
        except sqlite3.Error as exc:
            await self.shutdown()
            raise StoreError(f"cannot open the local store at {self.path}: {exc}") from exc

    async def shutdown(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    # -- the request log and its usage counts ----------------------------------------------

    async def append_requests(self, entries: Sequence[RequestEntry]) -> None:
        def write(db: sqlite3.Connection) -> None:
            # Encoded and counted here, on the store's thread, not on the event loop's.
            db.executemany(
                "INSERT INTO request_log (time, org_id, key_id, route, status, entry)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(e.time, e.org_id, e.key_id, e.route, e.status, e.encode()) for e in entries],
            )
            db.executemany(
                "INSERT INTO usage (scope, size, start, requests, errors, rate_limited)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, size, start) DO UPDATE SET"
                " requests = requests + excluded.requests, errors = errors + excluded.errors,"
                " rate_limited = rate_limited + excluded.rate_limited",
                [
                    (_scope_text(scope), size, start, *row)
                    for (scope, size, start), row in usage_counts(entries).items()
                ],
            )

        await self._run(write)

    async def query_requests(
        self, where: RequestFilter, limit: int, cursor: str | None = None
    ) -> Page[RequestEntry]:
        equal = [
            ("org_id", where.org_id),
            ("key_id", where.key_id),
            ("route", where.route),
            ("status", where.status),
        ]
        clauses: list[tuple[str, list[object]]] = []
        if where.status_class is not None:
            low = where.status_class * 100
            clauses.append(("status >= ? AND status < ?", [low, low + 100]))
        rows, next_cursor = await self._page(
            "request_log", equal, clauses, where.since, where.until, limit, cursor
        )
        return Page([RequestEntry.decode(row) for row in rows], next_cursor)

    async def _page(
        self,
        table: str,
        equal: Sequence[tuple[str, object]],
        clauses: Sequence[tuple[str, list[object]]],
        since: float | None,
        until: float | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[bytes], str | None]:
        """One page of a table's entries, newest first (by seq): those whose columns equal
        what ``equal`` gives (None: any), that meet ``clauses``, in [since, until), before the
        cursor. The cursor is the seq of the page's last entry."""
        before = _cursor(cursor)
        where = [(f"{column} = ?", [value]) for column, value in equal if value is not None]
        where += list(clauses)
        if since is not None:
            where.append(("time >= ?", [since]))
        if until is not None:
            where.append(("time < ?", [until]))
        if before is not None:
            where.append(("seq < ?", [before]))
        sql = f"SELECT seq, entry FROM {table}"  # noqa: S608 - table and columns are literals
        if where:
            sql += " WHERE " + " AND ".join(clause for clause, _ in where)
        sql += " ORDER BY seq DESC LIMIT ?"
        # One more than asked says whether there is a next page.
        args = [arg for _, values in where for arg in values] + [limit + 1]
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        more = len(rows) > limit
        return [entry for _, entry in rows[:limit]], str(rows[limit - 1][0]) if more else None

    async def usage(
        self,
        bucket: Bucket,
        since: float,
        until: float,
        *,
        org_id: str | None = None,
        key_id: str | None = None,
    ) -> list[UsageBucket]:
        scope = _scope_text((org_id, key_id))
        size = BUCKET_SECONDS[bucket]
        starts = bucket_starts(bucket, since, until)
        if not starts:
            return []
        rows = await self._run(
            lambda db: db.execute(
                "SELECT start, requests, errors, rate_limited FROM usage"
                " WHERE scope = ? AND size = ? AND start >= ? AND start <= ?",
                (scope, size, starts[0], starts[-1]),
            ).fetchall()
        )
        found = {start: (requests, errors, limited) for start, requests, errors, limited in rows}
        return [UsageBucket(float(s), *found.get(s, (0, 0, 0))) for s in starts]

    # -- the audit log -----------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO audit_log (time, org_id, action, entry) VALUES (?, ?, ?, ?)",
                (entry.time, entry.org_id, entry.action, entry.encode()),
            )
        )

    async def query_audit(
        self, where: AuditFilter, limit: int, cursor: str | None = None
    ) -> Page[AuditEntry]:
        equal = [("org_id", where.org_id), ("action", where.action)]
        rows, next_cursor = await self._page(
            "audit_log", equal, [], where.since, where.until, limit, cursor
        )
        return Page([AuditEntry.decode(row) for row in rows], next_cursor)

    # -- retention ---------------------------------------------------------------------------

    async def trim(self, now: float, retention: Retention) -> None:
        def trim(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM request_log WHERE time < ?", (now - retention.requests_max_age,)
            )
            # Entries of no org (no key, a bad key) first, to their share: a flood of them
            # must not push any org's history out.
            db.execute(
                "DELETE FROM request_log WHERE org_id IS NULL AND seq < (SELECT seq FROM"
                " request_log WHERE org_id IS NULL ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (anonymous_share(retention.requests_max_entries) - 1,),
            )
            db.execute(
                "DELETE FROM request_log WHERE seq <= (SELECT MAX(seq) FROM request_log) - ?",
                (retention.requests_max_entries,),
            )
            db.execute("DELETE FROM audit_log WHERE time < ?", (now - retention.audit_max_age,))
            for size, max_age in (
                (60, retention.minute_buckets_max_age),
                (3600, retention.hour_buckets_max_age),
            ):
                db.execute("DELETE FROM usage WHERE size = ? AND start < ?", (size, now - max_age))

        await self._run(trim)
