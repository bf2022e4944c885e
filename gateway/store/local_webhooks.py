"""Webhook endpoints in the local store's SQLite file, with the delivery queue beside them."""

from __future__ import annotations

import sqlite3

import orjson

from gateway.store.base import Change
from gateway.store.local_webhook_queue import QUEUE_SCHEMA, LocalDeliveryQueue
from gateway.store.webhook_base import WebhookStore
from gateway.store.webhook_models import Endpoint

_ENDPOINTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_org ON webhook_endpoints (org_id, created_at);
"""
SCHEMA = _ENDPOINTS_SCHEMA + QUEUE_SCHEMA


class LocalWebhookStore(LocalDeliveryQueue, WebhookStore):
    async def create_endpoint(self, endpoint: Endpoint, cap: int | None) -> bool:
        def insert(db: sqlite3.Connection) -> bool:
            if cap is not None:
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM webhook_endpoints WHERE org_id = ?", (endpoint.org_id,)
                ).fetchone()
                if count >= cap:
                    return False
            db.execute(
                "INSERT INTO webhook_endpoints (id, org_id, created_at, data) VALUES (?, ?, ?, ?)",
                (
                    endpoint.id,
                    endpoint.org_id,
                    endpoint.created_at,
                    orjson.dumps(endpoint.to_record()),
                ),
            )
            return True

        result: bool = await self._run(insert)
        return result

    async def get_endpoint(self, endpoint_id: str, org_id: str | None = None) -> Endpoint | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT data FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
            ).fetchone()
        )
        return Endpoint.from_record(orjson.loads(row[0])) if row else None

    async def list_endpoints(self, org_id: str) -> list[Endpoint]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT data FROM webhook_endpoints WHERE org_id = ? ORDER BY created_at, id",
                (org_id,),
            ).fetchall()
        )
        return [Endpoint.from_record(orjson.loads(r[0])) for r in rows]

    async def update_endpoint(
        self, endpoint_id: str, change: Change[Endpoint], org_id: str | None = None
    ) -> Endpoint | None:
        def update(db: sqlite3.Connection) -> Endpoint | None:
            row = db.execute(
                "SELECT data FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
            ).fetchone()
            if row is None:
                return None
            endpoint = change(Endpoint.from_record(orjson.loads(row[0])))
            db.execute(
                "UPDATE webhook_endpoints SET data = ? WHERE id = ?",
                (orjson.dumps(endpoint.to_record()), endpoint_id),
            )
            return endpoint

        result: Endpoint | None = await self._run(update)
        return result

    async def delete_endpoint(self, endpoint_id: str, org_id: str | None = None) -> bool:
        cursor = await self._run(
            lambda db: db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
        )
        return bool(cursor.rowcount == 1)
