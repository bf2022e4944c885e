"""The webhook delivery queue in the local SQLite store: events, leased deliveries, attempts."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from gateway.store.base import Conflict
from gateway.store.webhook_base import Outcome
from gateway.store.webhook_models import Attempt, Delivery, Event

T = TypeVar("T")
# Runs fn in one transaction on the store's connection (LocalStore._run).
Runner = Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]

QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    id TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at REAL NOT NULL,
    due REAL,  -- when a claim may take it: next_at, or the end of a lease; NULL when finished
    lease_until REAL NOT NULL,
    token TEXT NOT NULL,
    manual INTEGER NOT NULL,
    last_status INTEGER,
    updated_at REAL,
    expires_at REAL  -- set when finished
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (due) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_deliveries_queue
    ON webhook_deliveries (endpoint_id, due) WHERE due IS NOT NULL;
-- Endpoints with pending deliveries, by the earliest due: claims go endpoint by endpoint.
CREATE TABLE IF NOT EXISTS webhook_queues (
    endpoint_id TEXT PRIMARY KEY,
    next_due REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_queues_due ON webhook_queues (next_due);
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, created_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (delivery_id, number)
);
"""

_COLUMNS = (
    "id, endpoint_id, org_id, event_id, event_type, payload, created_at, status, attempts,"
    " next_at, lease_until, token, manual, last_status, updated_at"
)


class LocalDeliveryQueue:
    """The queue half of the webhook store; LocalWebhookStore adds the endpoints."""

    def __init__(self, run: Runner[Any]) -> None:
        self._run = run

    async def enqueue(self, event: Event, deliveries: Sequence[Delivery], keep: float) -> bool:
        def insert(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO webhook_events (id, data, expires_at) VALUES (?, ?, ?)",
                (event.id, orjson.dumps(event.to_record()), event.created_at + keep),
            )
            if cursor.rowcount != 1:
                return False
            db.executemany(
                f"INSERT INTO webhook_deliveries ({_COLUMNS}, due)"  # noqa: S608 - literal columns
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.id,
                        d.endpoint_id,
                        d.org_id,
                        d.event_id,
                        d.event_type,
                        d.payload,
                        d.created_at,
                        d.status,
                        d.attempts,
                        d.next_at,
                        0.0,
                        "",
                        0,
                        None,
                        None,
                        d.next_at,
                    )
                    for d in deliveries
                ],
            )
            for endpoint_id in {d.endpoint_id for d in deliveries}:
                _reindex(db, endpoint_id)
            return True

        result: bool = await self._run(insert)
        return result

    async def get_event(self, event_id: str) -> Event | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT data FROM webhook_events WHERE id = ?", (event_id,)
            ).fetchone()
        )
        return Event.from_record(orjson.loads(row[0])) if row else None

    async def claim(
        self,
        now: float,
        lease_until: float,
        limit: int,
        token: str,
        *,
        per_endpoint: int,
        busy: Mapping[str, int],
    ) -> list[Delivery]:
        def claim(db: sqlite3.Connection) -> list[Delivery]:
            left = limit
            claimed: list[Delivery] = []
            endpoints = db.execute(
                "SELECT endpoint_id FROM webhook_queues WHERE next_due <= ?"
                " ORDER BY next_due LIMIT ?",
                (now, limit + len(busy)),
            ).fetchall()
            # Endpoints the caller sends nothing to yet come first: backlogs at endpoints it is
            # already busy with (however many) cannot take every slot from the rest.
            endpoints.sort(key=lambda row: row[0] in busy)
            for (endpoint_id,) in endpoints:
                allowed = min(left, per_endpoint - busy.get(endpoint_id, 0))
                if left <= 0:
                    break
                if allowed <= 0:
                    continue
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM webhook_deliveries"  # noqa: S608 - literal columns
                    " WHERE endpoint_id = ? AND due IS NOT NULL AND due <= ? ORDER BY due LIMIT ?",
                    (endpoint_id, now, allowed),
                ).fetchall()
                db.executemany(
                    "UPDATE webhook_deliveries SET due = ?, lease_until = ?, token = ?"
                    " WHERE id = ?",
                    [(lease_until, lease_until, token, row[0]) for row in rows],
                )
                _reindex(db, endpoint_id)
                claimed += [_delivery(row, lease_until=lease_until, token=token) for row in rows]
                left -= len(rows)
            return claimed

        result: list[Delivery] = await self._run(claim)
        return result

    async def finish(
        self, delivery: Delivery, token: str, outcome: Outcome, now: float, keep: float
    ) -> bool:
        delivery_id = delivery.id
        attempt = outcome.attempt
        pending = outcome.status == "pending"

        def finish(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_at = ?, due = ?,"
                " lease_until = 0, token = '', manual = 0, last_status = ?, updated_at = ?,"
                " expires_at = ? WHERE id = ? AND token = ?",
                (
                    outcome.status,
                    attempt.number,
                    outcome.next_at if pending else 0.0,
                    outcome.next_at if pending else None,
                    attempt.status,
                    now,
                    None if pending else now + keep,
                    delivery_id,
                    token,
                ),
            )
            if cursor.rowcount != 1:
                return False
            _reindex_delivery(db, delivery_id)
            db.execute(
                "INSERT OR REPLACE INTO webhook_attempts (delivery_id, number, data)"
                " VALUES (?, ?, ?)",
                (delivery_id, attempt.number, attempt.encode()),
            )
            return True

        result: bool = await self._run(finish)
        return result

    async def release(self, delivery: Delivery, token: str, due: float) -> bool:
        delivery_id = delivery.id

        def release(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE webhook_deliveries SET due = ?, lease_until = 0, token = ''"
                " WHERE id = ? AND token = ? AND status = 'pending'",
                (due, delivery_id, token),
            )
            if cursor.rowcount != 1:
                return False
            _reindex_delivery(db, delivery_id)
            return True

        result: bool = await self._run(release)
        return result

    async def retry(
        self, delivery_id: str, now: float, org_id: str | None = None
    ) -> Delivery | None:
        def retry(db: sqlite3.Connection) -> Delivery | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = ?",  # noqa: S608 - literal columns
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            delivery = _delivery(row)
            if delivery.in_flight(now):
                raise Conflict("An attempt of this delivery is in flight; try again shortly.")
            # A finished delivery gets one attempt (manual); a pending one keeps what it was.
            manual = delivery.manual or delivery.status != "pending"
            db.execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_at = ?, due = ?,"
                " manual = ?, expires_at = NULL, lease_until = 0, token = '' WHERE id = ?",
                (now, now, int(manual), delivery_id),
            )
            _reindex(db, delivery.endpoint_id)
            return replace(
                delivery, status="pending", next_at=now, manual=manual, lease_until=0.0, token=""
            )

        result: Delivery | None = await self._run(retry)
        return result

    async def get_delivery(self, delivery_id: str, org_id: str | None = None) -> Delivery | None:
        found = await self._deliveries("WHERE id = ?", (delivery_id,))
        return found[0] if found else None

    async def list_deliveries(
        self, endpoint_id: str, limit: int, org_id: str | None = None
    ) -> list[Delivery]:
        return await self._deliveries(
            "WHERE endpoint_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", (endpoint_id, limit)
        )

    async def _deliveries(self, where: str, args: tuple[Any, ...]) -> list[Delivery]:
        def read(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries {where}",  # noqa: S608 - literal SQL
                args,
            ).fetchall()
            found = []
            for row in rows:
                history = tuple(
                    Attempt.decode(a[0])
                    for a in db.execute(
                        "SELECT data FROM webhook_attempts WHERE delivery_id = ? ORDER BY number",
                        (row[0],),
                    )
                )
                found.append(_delivery(row, history=history))
            return found

        result: list[Delivery] = await self._run(read)
        return result

    async def queue_depth(self, now: float) -> tuple[int, int]:
        row = await self._run(
            lambda db: db.execute(
                "SELECT COUNT(*), COALESCE(SUM(due <= ?), 0) FROM webhook_deliveries"
                " WHERE due IS NOT NULL",
                (now,),
            ).fetchone()
        )
        return int(row[0]), int(row[1])

    async def purge(self, now: float) -> None:
        def purge(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                " (SELECT id FROM webhook_deliveries WHERE expires_at <= ?)",
                (now,),
            )
            db.execute("DELETE FROM webhook_deliveries WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM webhook_events WHERE expires_at <= ?", (now,))

        await self._run(purge)


def _reindex(db: sqlite3.Connection, endpoint_id: str) -> None:
    """Keep webhook_queues in step: the endpoint's earliest due, or no row when none is."""
    (first,) = db.execute(
        "SELECT MIN(due) FROM webhook_deliveries WHERE endpoint_id = ? AND due IS NOT NULL",
        (endpoint_id,),
    ).fetchone()
    if first is None:
        db.execute("DELETE FROM webhook_queues WHERE endpoint_id = ?", (endpoint_id,))
    else:
        db.execute(
            "INSERT OR REPLACE INTO webhook_queues (endpoint_id, next_due) VALUES (?, ?)",
            (endpoint_id, first),
        )


def _reindex_delivery(db: sqlite3.Connection, delivery_id: str) -> None:
    row = db.execute(
        "SELECT endpoint_id FROM webhook_deliveries WHERE id = ?", (delivery_id,)
    ).fetchone()
    if row is not None:
        _reindex(db, row[0])


def _delivery(
    row: tuple[Any, ...],
    *,
    lease_until: float | None = None,
    token: str | None = None,
    history: tuple[Attempt, ...] = (),
) -> Delivery:
    return Delivery(
        id=row[0],
        endpoint_id=row[1],
        org_id=row[2],
        event_id=row[3],
        event_type=row[4],
        payload=bytes(row[5]),
        created_at=row[6],
        status=row[7],
        attempts=row[8],
        next_at=row[9],
        lease_until=row[10] if lease_until is None else lease_until,
        token=row[11] if token is None else token,
        manual=bool(row[12]),
        last_status=row[13],
        updated_at=row[14],
        history=history,
    )
