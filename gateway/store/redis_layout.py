"""Moving a dataset written by an earlier release into the keyspace of this one.

Releases before the Redis Cluster layout kept every org, key and last-used time under the hash
tag ``{meta}`` and the whole webhook queue under ``{wh}``. The first instance of this release
to start on such a dataset copies it into the current layout (see redis_keyspace), marks the
layout as current, and then deletes the old keys; the other instances wait for the mark. The
copy only writes, under names no earlier release uses, so a move cut short is simply run again.
Instances of an earlier release must be stopped first: what they write after the move is not
seen.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.store.redis_keyspace import Keyspace
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.store")

CURRENT = b"2"  # the layout of redis_keyspace
_LOCK_MS = 60_000  # a mover that died lets another one take over after this
_RENEW_EVERY = 10.0  # seconds: a live mover keeps its lock long before it runs out
# Set the mark only while holding the lock: a mover whose lock ran out (it stalled) and was
# taken over must not declare the dataset moved.
_MARK_IF_HOLDER = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
_RENEW_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LayoutLockLost(RuntimeError):
    """Another instance took over the move: this one stops writing."""


async def move_to_current_layout(client: aioredis.Redis, names: Keyspace) -> None:
    """Copy an earlier release's dataset into the current layout, once, and remove the old
    keys; errors are the client's (the store maps them)."""
    layout = names.layout()
    lock = layout + ":moving"
    while True:
        mover = _Mover(client, names)
        if await client.get(layout) == CURRENT:
            if await mover.has_old_data():
                await mover.delete_old()  # a mover that set the mark died before this
            return
        if not await mover.has_old_data():
            await client.set(layout, CURRENT)
            return
        token = os.urandom(8).hex()
        if not await client.set(lock, token, nx=True, px=_LOCK_MS):
            # Another instance is moving it: wait for the mark (or for its lock to run out).
            await asyncio.sleep(0.2)
            continue
        keeper = asyncio.create_task(_keep_lock(client, lock, token, mover))
        try:
            counts = await mover.copy()
            if not await client.eval(_MARK_IF_HOLDER, 2, layout, lock, token, CURRENT):
                raise LayoutLockLost("taken over")
            await mover.delete_old()
            log.info("store_layout_moved", **counts)
            return
        except LayoutLockLost:
            # This one stalled and another took over: wait for that one's mark instead.
            log.warning("store_layout_move_taken_over")
        finally:
            await cancel_and_wait(keeper)
            await client.eval(_RELEASE_IF_HOLDER, 1, lock, token)


async def _keep_lock(client: aioredis.Redis, lock: str, token: str, mover: _Mover) -> None:
    while True:
        await asyncio.sleep(_RENEW_EVERY)
        try:
            kept = await client.eval(_RENEW_IF_HOLDER, 1, lock, token, _LOCK_MS)
        except (RedisError, OSError) as exc:
            log.warning("store_layout_lock_not_renewed", error=str(exc))  # again in a while
            continue
        if not kept:
            mover.lost = True  # checked before each write: stop at once
            return


class _Mover:
    def __init__(self, client: aioredis.Redis, names: Keyspace) -> None:
        self.client = client
        self.names = names
        self.meta = f"{names.prefix}:{{meta}}:"
        self.wh = f"{names.prefix}:{{wh}}:"
        self.copied_deliveries: set[str] = set()
        self.lost = False  # set by the lock keeper: another instance has taken over

    async def has_old_data(self) -> bool:
        # The two keys delete_old removes last: there while anything old is left.
        return bool(await self.client.exists(self.meta + "orgs", self.wh + "due"))

    def _writing(self) -> aioredis.Redis:
        if self.lost:
            raise LayoutLockLost("the store layout move was taken over by another instance")
        return self.client

    async def _scored(self, name: str) -> list[tuple[str, float]]:
        """The members of an old sorted set, with their scores."""
        rows = await self.client.zrange(name, 0, -1, withscores=True)
        return [(member.decode(), float(score)) for member, score in cast(Any, rows)]

    async def _record(self, name: str, field: str) -> tuple[bytes, str] | None:
        """An old JSON record and one of its fields; None when it is gone, or (logged) when
        it cannot be read: the record is skipped."""
        raw = await self.client.get(name)
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)[field]
        except (ValueError, KeyError, TypeError):
            log.warning("store_layout_record_skipped", record=name)
            return None
        return cast(bytes, raw), str(value)

    async def copy(self) -> dict[str, int]:
        counts = {"orgs": 0, "keys": 0, "endpoints": 0, "deliveries": 0}
        client, names = self.client, self.names
        for org_id, created_at in await self._scored(self.meta + "orgs"):
            org = await self._record(self.meta + f"org:{org_id}", "slug")
            if org is None:
                continue
            raw, slug = org
            w = self._writing()
            await w.set(names.org(org_id), raw, nx=True)
            await w.zadd(names.orgs(), {org_id: created_at}, nx=True)
            await w.set(names.slug(slug), org_id, nx=True)
            counts["orgs"] += 1
            for key_id, key_created_at in await self._scored(self.meta + f"orgkeys:{org_id}"):
                key = await self._record(self.meta + f"key:{key_id}", "key_hash")
                if key is None:
                    continue
                key_raw, key_hash = key
                used = await client.hget(self.meta + "lastused", key_id)
                w = self._writing()
                await w.set(names.key(org_id, key_id), key_raw, nx=True)
                await w.zadd(names.org_keys(org_id), {key_id: key_created_at}, nx=True)
                await w.set(names.key_org(key_id), org_id, nx=True)
                await w.set(names.key_hash(key_hash), f"{org_id}:{key_id}", nx=True)
                if used is not None:
                    await w.zadd(names.last_used(org_id), {key_id: float(used)}, gt=True)
                counts["keys"] += 1
            counts["endpoints"] += await self._copy_endpoints(org_id)
        counts["deliveries"] = await self._copy_queue()
        return counts

    async def _copy_endpoints(self, org_id: str) -> int:
        """The org's endpoints, with the history of each (a deleted endpoint's history goes
        with it: nothing can list it)."""
        client = self.client
        shard = self.names.webhooks(self.names.webhook_shard(org_id))
        copied = 0
        for endpoint_id, created_at in await self._scored(self.wh + f"orgeps:{org_id}"):
            raw = await client.get(self.wh + f"ep:{endpoint_id}")
            if raw is None:
                continue
            await self._writing().set(shard + f"ep:{endpoint_id}", raw, nx=True)
            await self._writing().zadd(
                shard + f"orgeps:{org_id}", {endpoint_id: created_at}, nx=True
            )
            for delivery_id, at in await self._scored(self.wh + f"epdlv:{endpoint_id}"):
                if await self._copy_delivery(delivery_id):
                    await self._writing().zadd(
                        shard + f"epdlv:{endpoint_id}", {delivery_id: at}, nx=True
                    )
            copied += 1
        return copied

    async def _copy_queue(self) -> int:
        """Every pending delivery, into its org's shard's queue (those of deleted endpoints
        too: they still end, as dead)."""
        for delivery_id, at in await self._scored(self.wh + "due"):
            delivery = await self._copy_delivery(delivery_id)
            if delivery is None:
                continue
            shard, endpoint_id = delivery
            w = self._writing()
            await w.zadd(shard + "due", {delivery_id: at}, nx=True)
            await w.zadd(shard + f"q:{endpoint_id}", {delivery_id: at}, nx=True)
            await w.zadd(shard + "ready", {endpoint_id: at}, lt=True)
        return len(self.copied_deliveries)

    async def _copy_delivery(self, delivery_id: str) -> tuple[str, str] | None:
        """Its record, attempt log and event, with their expiry; (shard, endpoint id)."""
        client = self.client
        name = self.wh + f"dlv:{delivery_id}"
        fields = cast(dict[bytes, bytes], await client.hgetall(name))
        if not fields:
            return None
        org_id, endpoint_id = fields[b"org_id"].decode(), fields[b"endpoint_id"].decode()
        event_id = fields[b"event_id"].decode()
        shard = self.names.webhooks(self.names.webhook_shard(org_id))
        if delivery_id not in self.copied_deliveries:
            self.copied_deliveries.add(delivery_id)
            await self._copy(name, shard + f"dlv:{delivery_id}")
            await self._copy(self.wh + f"dlvlog:{delivery_id}", shard + f"dlvlog:{delivery_id}")
            await self._copy(self.wh + f"evt:{event_id}", shard + f"evt:{event_id}")
        return shard, endpoint_id

    async def _copy(self, old: str, new: str) -> None:
        """A string, hash or list, with its expiry (read first: a value read after it could
        have expired in between, and then the copy would never expire). Never over a key
        that exists: a move run again writes the same, and nothing else may be undone."""
        client = self.client
        if await client.exists(new):
            return
        ttl = await client.pttl(old)
        if ttl == -2:
            return  # gone, or expired meanwhile
        kind = cast(bytes, await client.type(old)).decode()
        value: Any
        if kind == "hash":
            value = await client.hgetall(old)
        elif kind == "list":
            value = await client.lrange(old, 0, -1)
        else:
            value = await client.get(old)
        if not value:
            return
        w = self._writing()
        if kind == "hash":
            await w.hset(new, mapping=value)
        elif kind == "list":
            await w.rpush(new, *value)
        else:
            await w.set(new, value)
        if ttl > 0:
            await w.pexpire(new, ttl)

    async def delete_old(self) -> None:
        """Every key of the earlier layout, found by name (those of deleted endpoints and
        orgs without a record too); the two that say old data is left go last."""
        last = {(self.meta + "orgs").encode(), (self.wh + "due").encode()}
        for tag in (self.meta, self.wh):
            # A cluster client scans every master; the old keys all share one slot per tag.
            names = [n async for n in self.client.scan_iter(match=_glob(tag) + "*", count=1000)]
            for start in range(0, len(names), 500):
                async with self.client.pipeline(transaction=False) as pipe:
                    for name in names[start : start + 500]:
                        if name not in last:
                            pipe.delete(name)
                    await pipe.execute()
        for name in last:
            await self.client.delete(name)


def _glob(text: str) -> str:
    """text, matched literally by SCAN's MATCH (its braces and brackets escaped)."""
    return "".join("\\" + c if c in "*?[]\\{}" else c for c in text)
