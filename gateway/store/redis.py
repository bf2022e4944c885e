"""The shared store on Redis: any number of gateway instances, pub/sub cache invalidation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, WatchError

from gateway.breaker import Backoff
from gateway.store.base import (
    Change,
    Conflict,
    IdempotencyBegin,
    Invalidation,
    Store,
    StoreError,
)
from gateway.store.models import ApiKey, Org
from gateway.store.redis_webhooks import RedisWebhookStore
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.store")
R = TypeVar("R")


def _script(name: str) -> str:
    return resources.files("gateway.store").joinpath(name).read_text()


class RedisStore(Store):
    """Records are JSON strings under one hash tag, so multi-key transactions also run on a
    Redis Cluster. Changes are published on a channel that every instance listens to.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "gw",
        username: str | None = None,
        password: str | None = None,
        ca_pem: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        # Login and TLS, for every connection of every client (a URL's own credentials and
        # query options still apply where these are not set).
        self._login: dict[str, Any] = {}
        if username:
            self._login["username"] = username
        if password:
            self._login["password"] = password
        if url.lower().startswith("rediss://"):
            # SECURITY: the server's certificate is verified, its name included, whatever the
            # client library's defaults are.
            self._login |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
            if ca_pem is not None:
                self._login["ssl_ca_data"] = ca_pem
        self._key_prefix = key_prefix
        self._p = f"{key_prefix}:{{meta}}"
        self._channel = f"{key_prefix}:invalidate"
        self._client: aioredis.Redis | None = None
        self._limits_client: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        # False while the invalidation channel is down: caches must then not be trusted long.
        self._invalidation_live = False
        self._subscribed = asyncio.Event()
        self.webhooks: RedisWebhookStore = RedisWebhookStore(self, key_prefix)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError("the redis store is not open")
        return self._client

    async def startup(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url,
            **self._login,
            # A gateway must not hold requests for long on a store that is gone.
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            health_check_interval=15,
            decode_responses=False,
        )
        # The rate limiter's own connections: every request waits on them, so they carry no
        # per-command timeout (redis-py arms one timer per command read, and runs each send
        # in a task of its own under one); the limiter gives each batch one deadline instead,
        # which also finds a dead connection.
        self._limits_client = aioredis.Redis.from_url(
            self.url,
            **self._login,
            socket_connect_timeout=0.5,
            socket_timeout=None,  # not redis-py's default (5 s on 8.x): none at all
            decode_responses=False,  # and no health checks: a clock read per command
        )
        self._create_org = self._client.register_script(_script("create_org.lua"))
        self._touch = self._client.register_script(_script("touch_keys.lua"))
        self._idem_begin = self._client.register_script(_script("idem_begin.lua"))
        self._idem_finish = self._client.register_script(_script("idem_finish.lua"))
        self.webhooks.register_scripts()
        try:
            await self.ping()
        except BaseException:
            await self.shutdown()  # a store that could not start holds no connection
            raise
        self._listener = asyncio.create_task(self._listen(), name="gateway-store-invalidation")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    async def shutdown(self) -> None:
        await cancel_and_wait(self._listener)
        self._listener = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._limits_client is not None:
            await self._limits_client.aclose()
            self._limits_client = None

    @property
    def invalidation_live(self) -> bool:
        return self._invalidation_live

    def shared_limits(self) -> aioredis.Redis:
        if self._limits_client is None:
            raise StoreError("the redis store is not open")
        return self._limits_client

    def event_stream(self) -> aioredis.Redis:
        return self.client

    async def _listen(self) -> None:
        """Follow the invalidation channel; after any gap, tell listeners to drop everything."""
        # Every instance loses the channel when Redis restarts: jitter spreads their returns.
        backoff = Backoff(0.1, 2.0, jitter=0.5)
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                if not self._subscribed.is_set():
                    self._subscribed.set()
                else:
                    self._notify(Invalidation("all"))  # messages may have been missed
                self._invalidation_live = True
                backoff.reset()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._notify(Invalidation.decode(message["data"].decode()))
            except (RedisError, OSError) as exc:
                # Caches are kept while the store is away (warm keys keep working) and dropped
                # when the channel is back, since changes may have been missed meanwhile.
                if self._invalidation_live:
                    log.warning("store_invalidation_lost", error=repr(exc))
                self._invalidation_live = False
                await asyncio.sleep(backoff.next_delay())
            finally:
                with contextlib.suppress(RedisError, OSError):
                    # Untyped before redis-py 8.2, typed after: Any serves both.
                    await cast(Any, pubsub).aclose()

    script_text = staticmethod(_script)

    async def call(self, coro: Any) -> Any:
        """Await a Redis command; any Redis or socket failure becomes a StoreError."""
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: {exc}") from exc

    async def ping(self) -> None:
        await self.call(self.client.ping())

    # -- orgs ------------------------------------------------------------------------------

    async def create_org(self, org: Org) -> None:
        created = await self.call(
            self._create_org(
                keys=[
                    f"{self._p}:org:{org.id}",
                    f"{self._p}:orgslug:{org.slug}",
                    f"{self._p}:orgs",
                ],
                args=[org.id, orjson.dumps(org.to_record()), org.created_at],
            )
        )
        if not created:
            raise Conflict(f"An org with slug {org.slug!r} already exists.")

    async def get_org(self, ref: str) -> Org | None:
        org_id = ref
        if not ref.startswith("org_"):
            found = await self.call(self.client.get(f"{self._p}:orgslug:{ref}"))
            if found is None:
                return None
            org_id = found.decode()
        raw = await self.call(self.client.get(f"{self._p}:org:{org_id}"))
        return Org.from_record(orjson.loads(raw)) if raw else None

    async def list_orgs(self) -> list[Org]:
        ids = await self.call(self.client.zrange(f"{self._p}:orgs", 0, -1))
        if not ids:
            return []
        raws = await self.call(self.client.mget([f"{self._p}:org:{i.decode()}" for i in ids]))
        return [Org.from_record(orjson.loads(r)) for r in raws if r]

    async def update_org(self, org_id: str, change: Change[Org]) -> Org | None:
        def apply(raw: bytes) -> tuple[Org, bytes, Invalidation]:
            org = change(Org.from_record(orjson.loads(raw)))
            return org, orjson.dumps(org.to_record()), Invalidation("org", org.id)

        return await self.update_record(f"{self._p}:org:{org_id}", apply)

    async def update_record(
        self, name: str, apply: Callable[[bytes], tuple[R, bytes, Invalidation | None]]
    ) -> R | None:
        """Optimistic read-modify-write: WATCH, read, MULTI/EXEC; again if another writer won.

        The Invalidation, if any, is published in the same transaction.
        """
        for _ in range(50):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await self.call(pipe.watch(name))
                    raw = await self.call(pipe.get(name))
                    if raw is None:
                        return None
                    result, record, message = apply(raw)
                    pipe.multi()  # type: ignore[no-untyped-call] # untyped in redis-py
                    pipe.set(name, record)
                    if message is not None:
                        pipe.publish(self._channel, message.encode())
                    await self.call(pipe.execute())
                    return result
                except StoreError as exc:
                    if isinstance(exc.__cause__, WatchError):
                        continue
                    raise
        raise StoreError(f"redis store: {name} kept changing; gave up after 50 tries")

    # -- keys ------------------------------------------------------------------------------

    async def create_key(self, key: ApiKey) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(f"{self._p}:key:{key.id}", orjson.dumps(key.to_record()))
            pipe.set(f"{self._p}:keyhash:{key.key_hash}", key.id)
            pipe.zadd(f"{self._p}:orgkeys:{key.org_id}", {key.id: key.created_at})
            pipe.publish(self._channel, Invalidation("key", key.key_hash).encode())
            await self.call(pipe.execute())

    async def _keys(self, ids: list[str]) -> list[ApiKey]:
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.mget([f"{self._p}:key:{i}" for i in ids])
            pipe.hmget(f"{self._p}:lastused", ids)
            raws, last_used = await self.call(pipe.execute())
        keys = []
        for raw, used in zip(raws, last_used, strict=True):
            if raw is None:
                continue
            record = orjson.loads(raw)
            if used is not None:
                record["last_used_at"] = max(record.get("last_used_at") or 0, float(used))
            keys.append(ApiKey.from_record(record))
        return keys

    async def get_key(self, key_id: str) -> ApiKey | None:
        found = await self._keys([key_id])
        return found[0] if found else None

    async def find_key(self, key_hash: str) -> ApiKey | None:
        key_id = await self.call(self.client.get(f"{self._p}:keyhash:{key_hash}"))
        return await self.get_key(key_id.decode()) if key_id else None

    async def list_keys(
        self, org_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ApiKey]:
        stop = -1 if limit is None else offset + max(1, limit) - 1
        ids = await self.call(self.client.zrange(f"{self._p}:orgkeys:{org_id}", offset, stop))
        return await self._keys([i.decode() for i in ids])

    async def update_key(self, key_id: str, change: Change[ApiKey]) -> ApiKey | None:
        def apply(raw: bytes) -> tuple[ApiKey, bytes, Invalidation]:
            key = change(ApiKey.from_record(orjson.loads(raw)))
            record = key.to_record()
            record.pop("last_used_at", None)  # kept in its own hash, moved forward only
            return key, orjson.dumps(record), Invalidation("key", key.key_hash)

        return await self.update_record(f"{self._p}:key:{key_id}", apply)

    def _idem_key(self, scope: str) -> str:
        # scope is "<org id>:<key hash>": the org is the hash tag, like the org's rate limits.
        org, _, rest = scope.partition(":")
        return f"{self._key_prefix}:idem:{{{org}}}:{rest}"

    async def idempotency_begin(
        self, scope: str, fingerprint: str, token: str, now: float, lock_seconds: float
    ) -> IdempotencyBegin:
        answer = await self.call(
            self._idem_begin(
                keys=[self._idem_key(scope)],
                args=[fingerprint, token, int(now * 1000), max(1, int(lock_seconds * 1000))],
            )
        )
        outcome = answer[0].decode()
        if outcome == "replay":
            return IdempotencyBegin("replay", bytes(answer[1]))
        if outcome in ("acquired", "mismatch", "in_flight"):
            return IdempotencyBegin(outcome)
        raise StoreError(f"redis store: unexpected idempotency answer {outcome!r}")

    async def idempotency_renew(
        self, scope: str, token: str, now: float, lock_seconds: float
    ) -> bool:
        lock_ms = max(1, int(lock_seconds * 1000))
        renewed = await self.call(
            self._idem_finish(
                keys=[self._idem_key(scope)],
                args=[token, "renew", int(now * 1000) + lock_ms, lock_ms],
            )
        )
        return bool(renewed)

    async def idempotency_finish(
        self, scope: str, token: str, response: bytes | None, now: float, keep_seconds: float
    ) -> bool:
        args: list[str | bytes | int] = (
            [token, "release", b"", 1]
            if response is None
            else [token, "complete", response, max(1, int(keep_seconds * 1000))]
        )
        done = await self.call(self._idem_finish(keys=[self._idem_key(scope)], args=args))
        return bool(done)

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        if not last_used:
            return
        args: list[str | float] = []
        for key_id, at in last_used.items():
            args += [key_id, at]
        await self.call(self._touch(keys=[f"{self._p}:lastused"], args=args))
