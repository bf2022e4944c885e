"""Webhook endpoints and the delivery queue on Redis.

Every key shares the ``{wh}`` hash tag, so the Lua scripts that touch several of them run on a
Redis Cluster too. Times are float seconds; the due queue is a sorted set scored by when a
delivery may next be claimed (its next attempt, or the end of its lease).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.store.base import Change, Conflict
from gateway.store.webhook_base import Outcome, WebhookStore
from gateway.store.webhook_models import Attempt, Delivery, Endpoint, Event

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore


_HISTORY_AFTER_DELETE = 86400  # seconds a deleted endpoint's delivery index outlives it


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisWebhookStore(WebhookStore):
    def __init__(self, store: RedisStore, key_prefix: str) -> None:
        self._store = store
        self._p = f"{key_prefix}:{{wh}}:"
        self._due = self._p + "due"  # every pending delivery, by when it is next due
        self._ready = self._p + "ready"  # endpoints with pending deliveries, by the earliest

    def register_scripts(self) -> None:
        client, script = self._store.client, self._store.script_text
        self._create = client.register_script(script("wh_create_endpoint.lua"))
        self._enqueue = client.register_script(script("wh_enqueue.lua"))
        self._claim = client.register_script(script("wh_claim.lua"))
        self._finish = client.register_script(script("wh_finish.lua"))
        self._release = client.register_script(script("wh_release.lua"))
        self._retry = client.register_script(script("wh_retry.lua"))

    async def _call(self, coro: Any) -> Any:
        return await self._store.call(coro)

    # -- endpoints -------------------------------------------------------------------------

    async def create_endpoint(self, endpoint: Endpoint, cap: int | None) -> bool:
        created = await self._call(
            self._create(
                keys=[self._p + f"ep:{endpoint.id}", self._p + f"orgeps:{endpoint.org_id}"],
                args=[
                    endpoint.id,
                    orjson.dumps(endpoint.to_record()),
                    endpoint.created_at,
                    -1 if cap is None else cap,
                ],
            )
        )
        return bool(created)

    async def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        raw = await self._call(self._store.client.get(self._p + f"ep:{endpoint_id}"))
        return Endpoint.from_record(orjson.loads(raw)) if raw else None

    async def list_endpoints(self, org_id: str) -> list[Endpoint]:
        ids = await self._call(self._store.client.zrange(self._p + f"orgeps:{org_id}", 0, -1))
        if not ids:
            return []
        raws = await self._call(
            self._store.client.mget([self._p + f"ep:{i.decode()}" for i in ids])
        )
        return [Endpoint.from_record(orjson.loads(r)) for r in raws if r]

    async def update_endpoint(self, endpoint_id: str, change: Change[Endpoint]) -> Endpoint | None:
        def apply(raw: bytes) -> tuple[Endpoint, bytes, None]:
            endpoint = change(Endpoint.from_record(orjson.loads(raw)))
            return endpoint, orjson.dumps(endpoint.to_record()), None

        return await self._store.update_record(self._p + f"ep:{endpoint_id}", apply)

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        endpoint = await self.get_endpoint(endpoint_id)
        if endpoint is None:
            return False
        async with self._store.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._p + f"ep:{endpoint_id}")
            pipe.zrem(self._p + f"orgeps:{endpoint.org_id}", endpoint_id)
            # Its history goes with its deliveries' records; pending ones still end (dead).
            pipe.expire(self._p + f"epdlv:{endpoint_id}", _HISTORY_AFTER_DELETE)
            deleted, _, _ = await self._call(pipe.execute())
        return bool(deleted)

    # -- the queue -------------------------------------------------------------------------

    async def enqueue(self, event: Event, deliveries: Sequence[Delivery], keep: float) -> bool:
        # History entries older than twice the keep time point to expired deliveries.
        trim_before = repr(event.created_at - 2 * keep)
        args: list[Any] = [orjson.dumps(event.to_record()), _ms(keep), self._p, trim_before]
        for d in deliveries:
            args += [
                d.id,
                d.endpoint_id,
                d.org_id,
                d.event_id,
                d.event_type,
                d.payload,
                repr(d.created_at),
                repr(d.next_at),
            ]
        stored = await self._call(
            self._enqueue(keys=[self._p + f"evt:{event.id}", self._due, self._ready], args=args)
        )
        return bool(stored)

    async def get_event(self, event_id: str) -> Event | None:
        raw = await self._call(self._store.client.get(self._p + f"evt:{event_id}"))
        return Event.from_record(orjson.loads(raw)) if raw else None

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
        args: list[Any] = [repr(now), repr(lease_until), limit, token, self._p, per_endpoint]
        for endpoint_id, count in busy.items():
            args += [endpoint_id, count]
        rows = await self._call(self._claim(keys=[self._ready, self._due], args=args))
        return [_delivery(_pairs(row)) for row in rows]

    async def finish(
        self, delivery_id: str, token: str, outcome: Outcome, now: float, keep: float
    ) -> bool:
        attempt = outcome.attempt
        done = await self._call(
            self._finish(
                keys=[
                    self._p + f"dlv:{delivery_id}",
                    self._p + f"dlvlog:{delivery_id}",
                    self._due,
                    self._ready,
                ],
                args=[
                    token,
                    delivery_id,
                    outcome.status,
                    repr(outcome.next_at),
                    attempt.number,
                    "" if attempt.status is None else attempt.status,
                    repr(now),
                    attempt.encode(),
                    _ms(keep),
                    self._p,
                ],
            )
        )
        return bool(done)

    async def release(self, delivery_id: str, token: str, due: float) -> bool:
        done = await self._call(
            self._release(
                keys=[self._p + f"dlv:{delivery_id}", self._due, self._ready],
                args=[token, delivery_id, repr(due), self._p],
            )
        )
        return bool(done)

    async def retry(self, delivery_id: str, now: float) -> Delivery | None:
        done = await self._call(
            self._retry(
                keys=[
                    self._p + f"dlv:{delivery_id}",
                    self._p + f"dlvlog:{delivery_id}",
                    self._due,
                    self._ready,
                ],
                args=[delivery_id, repr(now), self._p],
            )
        )
        if done == -1:
            raise Conflict("An attempt of this delivery is in flight; try again shortly.")
        return await self.get_delivery(delivery_id) if done else None

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        found = await self._deliveries([delivery_id])
        return found[0] if found else None

    async def list_deliveries(self, endpoint_id: str, limit: int) -> list[Delivery]:
        index = self._p + f"epdlv:{endpoint_id}"
        ids = [
            i.decode() for i in await self._call(self._store.client.zrevrange(index, 0, limit - 1))
        ]
        found = await self._deliveries(ids)
        gone = set(ids) - {d.id for d in found}
        if gone:  # finished deliveries past their keep time: drop them from the index too
            await self._call(self._store.client.zrem(index, *gone))
        return found

    async def _deliveries(self, ids: list[str]) -> list[Delivery]:
        if not ids:
            return []
        async with self._store.client.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self._p + f"dlv:{delivery_id}")
                pipe.lrange(self._p + f"dlvlog:{delivery_id}", 0, -1)
            replies = await self._call(pipe.execute())
        found = []
        for fields, log in zip(replies[::2], replies[1::2], strict=True):
            if fields:
                decoded = {k.decode(): v for k, v in fields.items()}
                found.append(_delivery(decoded, tuple(Attempt.decode(a) for a in log)))
        return found

    async def queue_depth(self, now: float) -> tuple[int, int]:
        async with self._store.client.pipeline(transaction=False) as pipe:
            pipe.zcard(self._due)
            pipe.zcount(self._due, "-inf", repr(now))
            pending, due = await self._call(pipe.execute())
        return int(pending), int(due)

    async def purge(self, now: float) -> None:
        """Nothing to do: finished deliveries and events carry their own expiry."""


def _pairs(row: list[bytes]) -> dict[str, bytes]:
    return {row[i].decode(): row[i + 1] for i in range(0, len(row), 2)}


def _delivery(fields: dict[str, bytes], history: tuple[Attempt, ...] = ()) -> Delivery:
    def text(name: str) -> str:
        return fields[name].decode()

    last_status = text("last_status")
    updated_at = text("updated_at")
    status: Any = text("status")
    return Delivery(
        id=text("id"),
        endpoint_id=text("endpoint_id"),
        org_id=text("org_id"),
        event_id=text("event_id"),
        event_type=text("event_type"),
        payload=bytes(fields["payload"]),
        created_at=float(text("created_at")),
        status=status,
        attempts=int(text("attempts")),
        next_at=float(text("next_at")),
        lease_until=float(text("lease_until")),
        token=text("token"),
        manual=text("manual") == "1",
        last_status=int(last_status) if last_status else None,
        updated_at=float(updated_at) if updated_at else None,
        history=history,
    )
