"""The embedded store: one SQLite file, for a single gateway instance."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.config.types import is_org_id
from gateway.store.base import (
    Change,
    Conflict,
    IdempotencyBegin,
    Invalidation,
    LimitState,
    Store,
    StoreError,
)
from gateway.store.local_activity import LocalActivityStore
from gateway.store.local_webhooks import SCHEMA as WEBHOOK_SCHEMA
from gateway.store.local_webhooks import LocalWebhookStore
from gateway.store.models import ApiKey, Org
from gateway.store.private_files import LooseMode, private_dir, private_file, report, tighten

T = TypeVar("T")

# Files SQLite keeps beside the database, as secret as the database itself.
_COMPANIONS = ("-wal", "-shm", "-journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    key_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_used_at REAL,  -- kept apart from data: moved forward only, never overwritten by updates
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_org ON api_keys (org_id, created_at);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    token TEXT,
    lock_until REAL,
    response BLOB,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
CREATE TABLE IF NOT EXISTS limit_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at INTEGER NOT NULL  -- epoch microseconds
);
"""


class LocalStore(Store):
    """SQLite in WAL mode with full fsync: an acknowledged write survives a crash.

    One thread owns the connection; the event loop never waits on disk except through it.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        self._db: sqlite3.Connection | None = None
        self._idempotency_writes = 0
        self.webhooks = LocalWebhookStore(self._run)
        self.activity = LocalActivityStore(path)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise StoreError("the local store is not open")
            db = self._db
            try:
                # BEGIN IMMEDIATE takes the write lock before the first read, so a
                # read-modify-write cannot interleave with another writer on the file.
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"local store: {exc}") from exc

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except RuntimeError as exc:  # the executor is shut down: the store is closed
            raise StoreError(f"local store: {exc}") from exc

    async def startup(self) -> None:
        def open_db() -> list[LooseMode | None]:
            path = Path(self.path)
            # SECURITY: the file holds key hashes, stored answers and webhook secrets. SQLite
            # gives its -wal, -shm and -journal files the database file's mode, so making that
            # file 0600 before SQLite opens it keeps every file beside it owner-only too.
            found = [private_dir(path.parent), private_file(path)]
            found += [tighten(Path(f"{self.path}{suffix}")) for suffix in _COMPANIONS]
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA + WEBHOOK_SCHEMA)
            self._db = db
            return found

        try:
            found = await asyncio.get_running_loop().run_in_executor(self._executor, open_db)
        except (sqlite3.Error, OSError) as exc:
            await self.shutdown()  # a store that did not open holds nothing (its thread goes)
            raise StoreError(f"cannot open the local store at {self.path}: {exc}") from exc
        report(found)
        try:
            await self.activity.startup()
        except StoreError:
            await self.shutdown()
            raise

    async def shutdown(self) -> None:
        await self.activity.shutdown()

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        # Safe to call again, also after a failed startup: the executor then refuses new work.
        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    def limit_state(self) -> LimitState:
        return self  # the one process on this file saves its limit counts beside the keys

    # -- orgs ------------------------------------------------------------------------------

    async def create_org(self, org: Org) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO orgs (id, slug, created_at, data) VALUES (?, ?, ?, ?)",
                (org.id, org.slug, org.created_at, orjson.dumps(org.to_record())),
            )

        try:
            await self._run(insert)
        except sqlite3.IntegrityError:
            raise Conflict(f"An org with slug {org.slug!r} already exists.") from None

    async def get_org(self, ref: str) -> Org | None:
        column = "id" if is_org_id(ref) else "slug"
        row = await self._run(
            lambda db: db.execute(f"SELECT data FROM orgs WHERE {column} = ?", (ref,)).fetchone()  # noqa: S608 - column is one of two literals
        )
        return Org.from_record(orjson.loads(row[0])) if row else None

    async def list_orgs(self) -> list[Org]:
        rows = await self._run(
            lambda db: db.execute("SELECT data FROM orgs ORDER BY created_at, id").fetchall()
        )
        return [Org.from_record(orjson.loads(r[0])) for r in rows]

    async def update_org(self, org_id: str, change: Change[Org]) -> Org | None:
        def update(db: sqlite3.Connection) -> Org | None:
            row = db.execute("SELECT data FROM orgs WHERE id = ?", (org_id,)).fetchone()
            if row is None:
                return None
            org = change(Org.from_record(orjson.loads(row[0])))
            db.execute(
                "UPDATE orgs SET slug = ?, data = ? WHERE id = ?",
                (org.slug, orjson.dumps(org.to_record()), org.id),
            )
            return org

        org = await self._run(update)
        if org is not None:
            self._notify(Invalidation("org", org.id))
        return org

    # -- keys ------------------------------------------------------------------------------

    async def create_key(self, key: ApiKey) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO api_keys (id, org_id, key_hash, created_at, last_used_at, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.org_id,
                    key.key_hash,
                    key.created_at,
                    key.last_used_at,
                    orjson.dumps(key.to_record()),
                ),
            )
        )
        self._notify(Invalidation("key", key.key_hash))  # drop a cached "unknown key"

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await self._one("WHERE id = ?", key_id)

    async def find_key(self, key_hash: str) -> ApiKey | None:
        return await self._one("WHERE key_hash = ?", key_hash)

    async def _one(self, where: str, arg: str) -> ApiKey | None:
        sql = f"SELECT data, last_used_at FROM api_keys {where}"  # noqa: S608 - where is a literal
        row = await self._run(lambda db: db.execute(sql, (arg,)).fetchone())
        return _key(row) if row else None

    async def list_keys(
        self, org_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ApiKey]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT data, last_used_at FROM api_keys WHERE org_id = ? ORDER BY created_at, id"
                " LIMIT ? OFFSET ?",
                (org_id, -1 if limit is None else max(1, limit), offset),
            ).fetchall()
        )
        return [_key(row) for row in rows]

    async def update_key(self, key_id: str, change: Change[ApiKey]) -> ApiKey | None:
        def update(db: sqlite3.Connection) -> ApiKey | None:
            # One transaction on the store's only connection: nothing interleaves.
            row = db.execute(
                "SELECT data, last_used_at FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                return None
            key = change(_key(row))
            db.execute(
                "UPDATE api_keys SET data = ? WHERE id = ?", (orjson.dumps(key.to_record()), key_id)
            )
            return key

        key = await self._run(update)
        if key is not None:
            self._notify(Invalidation("key", key.key_hash))
        return key

    async def idempotency_begin(
        self, scope: str, fingerprint: str, token: str, now: float, lock_seconds: float
    ) -> IdempotencyBegin:
        def begin(db: sqlite3.Connection) -> IdempotencyBegin:
            row = db.execute(
                "SELECT state, fingerprint, lock_until, response FROM idempotency"
                " WHERE scope = ? AND expires_at > ?",
                (scope, now),
            ).fetchone()
            if row is not None:
                state, stored_fingerprint, lock_until, response = row
                if stored_fingerprint != fingerprint:
                    return IdempotencyBegin("mismatch")
                if state == "done":
                    return IdempotencyBegin("replay", bytes(response))
                if lock_until > now:
                    return IdempotencyBegin("in_flight")
            # Free, expired, or held by a crashed holder whose lock ran out: take it.
            db.execute(
                "INSERT OR REPLACE INTO idempotency"
                " (scope, state, fingerprint, token, lock_until, response, expires_at)"
                " VALUES (?, 'in_flight', ?, ?, ?, NULL, ?)",
                (scope, fingerprint, token, now + lock_seconds, now + lock_seconds),
            )
            if self._idempotency_writes % 1000 == 0:  # old records go now and then
                db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            self._idempotency_writes += 1
            return IdempotencyBegin("acquired")

        return await self._run(begin)

    async def idempotency_renew(
        self, scope: str, token: str, now: float, lock_seconds: float
    ) -> bool:
        until = now + lock_seconds
        cursor = await self._run(
            lambda db: db.execute(
                "UPDATE idempotency SET lock_until = ?, expires_at = ?"
                " WHERE scope = ? AND token = ? AND state = 'in_flight'",
                (until, until, scope, token),
            )
        )
        return cursor.rowcount == 1

    async def idempotency_finish(
        self, scope: str, token: str, response: bytes | None, now: float, keep_seconds: float
    ) -> bool:
        def finish(db: sqlite3.Connection) -> bool:
            if response is None:
                cursor = db.execute(
                    "DELETE FROM idempotency WHERE scope = ? AND token = ?", (scope, token)
                )
            else:
                cursor = db.execute(
                    "UPDATE idempotency SET state = 'done', response = ?, token = NULL,"
                    " lock_until = NULL, expires_at = ? WHERE scope = ? AND token = ?",
                    (response, now + keep_seconds, scope, token),
                )
            return cursor.rowcount == 1

        return await self._run(finish)

    async def save_limit_state(self, changed: Mapping[str, tuple[int, int]], now_us: int) -> None:
        """Save what changed (key -> (value, expires at in us)) and forget what expired."""

        def save(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO limit_state (key, value, expires_at) VALUES (?, ?, ?)",
                [(key, value, expires) for key, (value, expires) in changed.items()],
            )
            db.execute("DELETE FROM limit_state WHERE expires_at <= ?", (now_us,))

        await self._run(save)

    async def load_limit_state(self, now_us: int) -> dict[str, tuple[int, int]]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT key, value, expires_at FROM limit_state WHERE expires_at > ?", (now_us,)
            ).fetchall()
        )
        return {key: (int(value), int(expires)) for key, value, expires in rows}

    async def touch_keys(self, last_used: Mapping[str, tuple[str, float]]) -> None:
        if not last_used:
            return
        await self._run(
            lambda db: db.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                [(at, key_id, at) for key_id, (_, at) in last_used.items()],
            )
        )


def _key(row: tuple[bytes, float | None]) -> ApiKey:
    record: dict[str, Any] = orjson.loads(row[0])
    record["last_used_at"] = row[1]
    return ApiKey.from_record(record)
