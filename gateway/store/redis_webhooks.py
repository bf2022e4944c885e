"""Webhook endpoints and the delivery queue on Redis.

An org's endpoints, deliveries and events live in one of the keyspace's webhook shards (each
key of a shard shares its hash tag), so the scripts that touch several of them run on a
Redis Cluster too, and the shards spread the queue over the masters. Claims visit the shards
that have due work. Times are float seconds; a shard's due queue is a sorted set scored by when
a delivery may next be claimed (its next attempt, or the end of its lease).

What is looked up by id alone (the admin API's routes by endpoint or delivery id) is looked for
in every shard at once, one pipeline per server; every other lookup knows the org, so its shard.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson

from gateway.store.base import Change, Conflict, StoreError
from gateway.store.redis_keyspace import WEBHOOK_SHARDS
from gateway.store.webhook_base import Outcome, WebhookStore
from gateway.store.webhook_models import Attempt, Delivery, Endpoint, Event

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore


_HISTORY_AFTER_DELETE = 86400  # seconds a deleted endpoint's delivery index outlives it
_RESCAN_AFTER = 0.1  # seconds a read of which shards have due work is used for claims


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisWebhookStore(WebhookStore):
    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._names = store.names
        # The shards with due work as last read (shard -> its earliest due time), and when (by
        # the clock claims are given).
        self._heads: dict[str, float] = {}
        self._scanned_at = -math.inf
        self._noted: dict[str, float] | None = None

    def register_scripts(self) -> None:
        register = self._store.register_script
        self._create = register("wh_create_endpoint.lua")
        self._enqueue = register("wh_enqueue.lua")
        self._claim = register("wh_claim.lua")
        self._finish = register("wh_finish.lua")
        self._release = register("wh_release.lua")
        self._retry = register("wh_retry.lua")

    def _shard(self, org_id: str) -> str:
        """The start of every key name of the org's shard."""
        return self._names.webhooks(self._names.webhook_shard(org_id))

    def _shards(self) -> list[str]:
        return [self._names.webhooks(shard) for shard in range(WEBHOOK_SHARDS)]

    async def _call(self, coro: Any) -> Any:
        return await self._store.call(coro)

    async def _each_shard(self, command: Callable[[Any, str], object]) -> list[tuple[str, Any]]:
        """``command(pipe, shard)`` on every shard; (shard, reply) of those that answered.
        One pipeline per server at once: a master that is away costs its own shards, never
        the others'."""
        groups = self._store.by_server(self._shards())

        async def run(shards: list[str]) -> list[tuple[str, Any]]:
            replies = await self._store.pipelined(
                lambda pipe: [command(pipe, shard) for shard in shards], raise_on_error=False
            )
            return [
                (shard, reply)
                for shard, reply in zip(shards, replies, strict=True)
                if not isinstance(reply, Exception)
            ]

        answers = await asyncio.gather(*(run(shards) for shards in groups), return_exceptions=True)
        answered = [pair for answer in answers if isinstance(answer, list) for pair in answer]
        if not answered:
            raise StoreError(f"redis store: no webhook shard answered: {answers[0]}")
        return answered

    async def _find(
        self, command: Callable[[Any, str], object], org_id: str | None = None
    ) -> tuple[str, Any] | None:
        """The shard whose reply to command is not empty, and that reply; None when every
        shard answered nothing (a shard that could not answer is a StoreError: an absence
        cannot be told then). With the org: its shard alone."""
        if org_id is not None:
            p = self._shard(org_id)
            # command stages on a pipeline, and on the client it is the command itself.
            reply = await self._call(cast(Any, command(self._store.client, p)))
            return (p, reply) if reply else None
        answered = await self._each_shard(command)
        for shard, reply in answered:
            if reply:
                return shard, reply
        if len(answered) < WEBHOOK_SHARDS:
            raise StoreError("redis store: a webhook shard is out of reach")
        return None

    async def _delivery_shard(self, delivery_id: str, org_id: str | None) -> tuple[str, str] | None:
        """The shard of a delivery and its endpoint's id, or None."""
        found = await self._find(
            lambda pipe, p: pipe.hget(p + f"dlv:{delivery_id}", "endpoint_id"), org_id
        )
        return (found[0], found[1].decode()) if found else None

    # -- endpoints -------------------------------------------------------------------------

    async def create_endpoint(self, endpoint: Endpoint, cap: int | None) -> bool:
        p = self._shard(endpoint.org_id)
        created = await self._store.write_script(
            self._create,
            [p + f"ep:{endpoint.id}", p + f"orgeps:{endpoint.org_id}"],
            [
                endpoint.id,
                orjson.dumps(endpoint.to_record()),
                endpoint.created_at,
                -1 if cap is None else cap,
            ],
        )
        return bool(created)

    async def _endpoint_shard(self, endpoint_id: str, org_id: str | None) -> str | None:
        if org_id is not None:
            return self._shard(org_id)
        found = await self._find(lambda pipe, p: pipe.get(p + f"ep:{endpoint_id}"))
        return found[0] if found else None

    async def get_endpoint(self, endpoint_id: str, org_id: str | None = None) -> Endpoint | None:
        found = await self._find(lambda pipe, p: pipe.get(p + f"ep:{endpoint_id}"), org_id)
        return Endpoint.from_record(orjson.loads(found[1])) if found else None

    async def list_endpoints(self, org_id: str) -> list[Endpoint]:
        p = self._shard(org_id)
        ids = await self._call(self._store.client.zrange(p + f"orgeps:{org_id}", 0, -1))
        if not ids:
            return []
        raws = await self._call(self._store.client.mget([p + f"ep:{i.decode()}" for i in ids]))
        return [Endpoint.from_record(orjson.loads(r)) for r in raws if r]

    async def update_endpoint(
        self, endpoint_id: str, change: Change[Endpoint], org_id: str | None = None
    ) -> Endpoint | None:
        def apply(raw: bytes) -> tuple[Endpoint, bytes, None]:
            endpoint = change(Endpoint.from_record(orjson.loads(raw)))
            return endpoint, orjson.dumps(endpoint.to_record()), None

        p = await self._endpoint_shard(endpoint_id, org_id)
        if p is None:
            return None
        return await self._store.update_record(p + f"ep:{endpoint_id}", apply)

    async def delete_endpoint(self, endpoint_id: str, org_id: str | None = None) -> bool:
        endpoint = await self.get_endpoint(endpoint_id, org_id)
        if endpoint is None:
            return False
        p = self._shard(endpoint.org_id)
        record, listing, history = (
            p + f"ep:{endpoint_id}",
            p + f"orgeps:{endpoint.org_id}",
            p + f"epdlv:{endpoint_id}",
        )
        deleted, _, _ = await self._store.write(
            lambda pipe: (
                pipe.delete(record),
                pipe.zrem(listing, endpoint_id),
                # Its history goes with its deliveries' records; pending ones still end (dead).
                pipe.expire(history, _HISTORY_AFTER_DELETE),
            ),
            [record],
        )
        return bool(deleted)

    # -- the queue -------------------------------------------------------------------------

    async def enqueue(self, event: Event, deliveries: Sequence[Delivery], keep: float) -> bool:
        p = self._shard(event.org_id)
        # History entries older than twice the keep time point to expired deliveries.
        trim_before = repr(event.created_at - 2 * keep)
        args: list[Any] = [orjson.dumps(event.to_record()), _ms(keep), trim_before]
        keys = [p + f"evt:{event.id}", p + "due", p + "ready"]
        for d in deliveries:
            self._due_now(p, d.next_at)
            keys += [p + f"dlv:{d.id}", p + f"q:{d.endpoint_id}", p + f"epdlv:{d.endpoint_id}"]
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
        return bool(await self._store.write_script(self._enqueue, keys, args))

    async def get_event(self, event_id: str) -> Event | None:
        found = await self._find(lambda pipe, p: pipe.get(p + f"evt:{event_id}"))
        return Event.from_record(orjson.loads(found[1])) if found else None

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
        # Which shards have an endpoint with due work, the longest-waiting first. Read anew
        # at most every _RESCAN_AFTER: a busy dispatcher claims after every attempt, and
        # asking all shards each time costs more than the claims; a shard this process
        # enqueues to is known at once (see _due_now).
        if not 0 <= now - self._scanned_at < _RESCAN_AFTER:
            # What this process enqueues while the read is out may be missing from its answer:
            # it is noted apart and kept, or it would wait for the next read.
            noted: dict[str, float] = {}
            self._noted = noted
            try:
                heads = await self._each_shard(
                    lambda pipe, p: pipe.zrange(p + "ready", 0, 0, withscores=True)
                )
            finally:
                self._noted = None
            self._scanned_at = now
            self._heads = {p: head[0][1] for p, head in heads if head}
            for p, at in noted.items():
                self._heads[p] = min(at, self._heads.get(p, at))
        waiting = sorted((at, p) for p, at in self._heads.items() if at <= now)
        claimed: list[Delivery] = []
        for _, p in waiting:
            if len(claimed) >= limit:
                break
            args: list[Any] = [
                repr(now),
                repr(lease_until),
                limit - len(claimed),
                token,
                p,
                per_endpoint,
            ]
            for endpoint_id, count in busy.items():
                args += [endpoint_id, count]
            try:
                rows = await self._call(self._claim(keys=[p + "ready", p + "due"], args=args))
            except StoreError:
                if claimed:
                    break  # hand out what is leased already; the rest waits for a later claim
                raise
            # A shard that gave nothing is asked again until the next scan: what kept it from
            # giving (this caller's attempts in flight to its endpoints) may end meanwhile.
            claimed += [_delivery(_pairs(row)) for row in rows]
        return claimed

    def _due_now(self, p: str, at: float) -> None:
        self._heads[p] = min(at, self._heads.get(p, at))
        if self._noted is not None:  # a read of the heads is out (see claim)
            self._noted[p] = min(at, self._noted.get(p, at))

    async def finish(
        self, delivery: Delivery, token: str, outcome: Outcome, now: float, keep: float
    ) -> bool:
        p = self._shard(delivery.org_id)
        attempt = outcome.attempt
        done = await self._call(
            self._finish(
                keys=[
                    p + f"dlv:{delivery.id}",
                    p + f"dlvlog:{delivery.id}",
                    p + "due",
                    p + "ready",
                    p + f"q:{delivery.endpoint_id}",
                ],
                args=[
                    token,
                    delivery.id,
                    outcome.status,
                    repr(outcome.next_at),
                    attempt.number,
                    "" if attempt.status is None else attempt.status,
                    repr(now),
                    attempt.encode(),
                    _ms(keep),
                ],
            )
        )
        if done and outcome.status == "pending":
            self._due_now(p, outcome.next_at)
        return bool(done)

    async def release(self, delivery: Delivery, token: str, due: float) -> bool:
        p = self._shard(delivery.org_id)
        done = await self._call(
            self._release(
                keys=[
                    p + f"dlv:{delivery.id}",
                    p + "due",
                    p + "ready",
                    p + f"q:{delivery.endpoint_id}",
                ],
                args=[token, delivery.id, repr(due)],
            )
        )
        if done:
            self._due_now(p, due)
        return bool(done)

    async def retry(
        self, delivery_id: str, now: float, org_id: str | None = None
    ) -> Delivery | None:
        located = await self._delivery_shard(delivery_id, org_id)
        if located is None:
            return None
        p, endpoint_id = located
        keys = [
            p + f"dlv:{delivery_id}",
            p + f"dlvlog:{delivery_id}",
            p + "due",
            p + "ready",
            p + f"q:{endpoint_id}",
        ]
        done = await self._store.write_script(
            self._retry, keys, [delivery_id, repr(now), endpoint_id]
        )
        if done == -1:
            raise Conflict("An attempt of this delivery is in flight; try again shortly.")
        if done:
            self._due_now(p, now)
        found = await self._deliveries(p, [delivery_id]) if done else []
        return found[0] if found else None

    async def get_delivery(self, delivery_id: str, org_id: str | None = None) -> Delivery | None:
        shard = await self._delivery_shard(delivery_id, org_id)
        found = await self._deliveries(shard[0], [delivery_id]) if shard else []
        return found[0] if found else None

    async def list_deliveries(
        self, endpoint_id: str, limit: int, org_id: str | None = None
    ) -> list[Delivery]:
        found_in = await self._find(
            lambda pipe, p: pipe.zrevrange(p + f"epdlv:{endpoint_id}", 0, limit - 1), org_id
        )
        p, ids = (found_in[0], [i.decode() for i in found_in[1]]) if found_in else ("", [])
        found = await self._deliveries(p, ids)
        gone = set(ids) - {d.id for d in found}
        if gone:  # finished deliveries past their keep time: drop them from the index too
            await self._call(self._store.client.zrem(p + f"epdlv:{endpoint_id}", *gone))
        return found

    async def _deliveries(self, p: str, ids: list[str]) -> list[Delivery]:
        if not ids:
            return []

        def stage(pipe: Any) -> None:
            for delivery_id in ids:
                pipe.hgetall(p + f"dlv:{delivery_id}")
                pipe.lrange(p + f"dlvlog:{delivery_id}", 0, -1)

        replies = await self._store.pipelined(stage)
        found = []
        for fields, log in zip(replies[::2], replies[1::2], strict=True):
            if fields:
                decoded = {k.decode(): v for k, v in fields.items()}
                found.append(_delivery(decoded, tuple(Attempt.decode(a) for a in log)))
        return found

    async def queue_depth(self, now: float) -> tuple[int, int]:
        # Of the shards that answer: a gauge, not a promise.
        pending = await self._each_shard(lambda pipe, p: pipe.zcard(p + "due"))
        due = await self._each_shard(lambda pipe, p: pipe.zcount(p + "due", "-inf", repr(now)))
        return sum(n for _, n in pending), sum(n for _, n in due)

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
