"""The shared store on Redis: any number of gateway instances, pub/sub cache invalidation."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.connection import parse_url
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError
from redis.typing import EncodableT

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

# What a Redis (or a cluster) that is away or failing raises: the cluster client's own errors
# (no reachable node, a slot no node serves) are not RedisErrors.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)
# The longest a write waits to hear its own announcement before acting on it alone.
_ECHO_WAIT = 1.0
R = TypeVar("R")


def _script(name: str) -> str:
    return resources.files("gateway.store").joinpath(name).read_text()


class RedisStore(Store):
    """Records are JSON strings under one hash tag, so multi-key transactions also run on a
    Redis Cluster. Changes are published on a channel that every instance listens to.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        cluster: bool = False,
        key_prefix: str = "gw",
        username: str | None = None,
        password: str | None = None,
        ca_pem: str | None = None,
    ) -> None:
        super().__init__()
        self.urls = (urls,) if isinstance(urls, str) else tuple(urls)
        self.cluster = cluster
        # Login and TLS, for every connection of every client (a URL's own credentials and
        # query options still apply where these are not set).
        self._login: dict[str, Any] = {}
        if username:
            self._login["username"] = username
        if password:
            self._login["password"] = password
        self._tls = self.urls[0].lower().startswith("rediss://")
        if self._tls:
            # SECURITY: the server's certificate is verified, its name included, whatever the
            # client library's defaults are.
            self._login |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
            if ca_pem is not None:
                self._login["ssl_ca_data"] = ca_pem
        self._key_prefix = key_prefix
        self._p = f"{key_prefix}:{{meta}}"
        self._channel = f"{key_prefix}:invalidate"
        # Where a write's nonce follows its announcement (see _announce); instances that do
        # not listen here (older ones) are unaffected.
        self._echo_channel = f"{key_prefix}:invalidate:echo"
        self._client: aioredis.Redis | None = None
        self._limits_client: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        # False while the invalidation channel is down: caches must then not be trusted long.
        self._invalidation_live = False
        self._subscribed = asyncio.Event()
        # Writes of this instance waiting to hear their own announcement (see _announce), and
        # a request to subscribe anew when one did not.
        self._echoes: dict[str, asyncio.Future[None]] = {}
        self._resubscribe = asyncio.Event()
        self.webhooks: RedisWebhookStore = RedisWebhookStore(self, key_prefix)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError("the redis store is not open")
        return self._client

    async def startup(self) -> None:
        self._client = self._connect(
            # A gateway must not hold requests for long on a store that is gone.
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            health_check_interval=15,
        )
        # The rate limiter's own connections: every request waits on them, so they carry no
        # per-command timeout (redis-py arms one timer per command read, and runs each send
        # in a task of its own under one); the limiter gives each batch one deadline instead,
        # which also finds a dead connection.
        self._limits_client = self._connect(
            socket_connect_timeout=0.5,
            socket_timeout=None,  # not redis-py's default (5 s on 8.x): none at all
        )  # and no health checks: a clock read per command
        self._create_org = self._client.register_script(_script("create_org.lua"))
        self._touch = self._client.register_script(_script("touch_keys.lua"))
        self._cas_set = self._client.register_script(_script("cas_set.lua"))
        self._create_key = self._client.register_script(_script("create_key.lua"))
        self._idem_begin = self._client.register_script(_script("idem_begin.lua"))
        self._idem_finish = self._client.register_script(_script("idem_finish.lua"))
        self.webhooks.register_scripts()
        try:
            await self.ping()
            await self._check_mode()
        except BaseException:
            await self.shutdown()  # a store that could not start holds no connection
            raise
        self._listener = asyncio.create_task(self._listen(), name="gateway-store-invalidation")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    def _connect(self, **options: Any) -> aioredis.Redis:
        """A client of the Redis, or of the cluster: the same commands, which the cluster
        client sends to the node that serves each key's slot (and follows when it moves)."""
        options |= self._login
        if not self.cluster:
            return aioredis.Redis.from_url(self.urls[0], decode_responses=False, **options)
        nodes = []
        for url in self.urls:
            # As the single-node client reads a url: credentials percent-decoded.
            parsed = parse_url(url)  # type: ignore[no-untyped-call]  # untyped in redis-py
            nodes.append(ClusterNode(parsed["host"], parsed.get("port", 6379)))
            for name in ("username", "password"):
                if parsed.get(name):
                    options.setdefault(name, parsed[name])
        if self._tls:
            options["ssl"] = True
        # Typed as the single-node client: the commands this store sends are the same.
        return cast(
            aioredis.Redis,
            RedisCluster(startup_nodes=nodes, decode_responses=False, **options),
        )

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
                await pubsub.subscribe(self._channel, self._echo_channel)
                if not self._subscribed.is_set():
                    self._subscribed.set()
                else:
                    self._notify(Invalidation("all"))  # messages may have been missed
                self._invalidation_live = True
                backoff.reset()
                while True:
                    if self._resubscribe.is_set():
                        self._resubscribe.clear()
                        raise ConnectionError("a write did not hear its own announcement")
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"].decode()
                        if message["channel"].decode() == self._echo_channel:
                            waiter = self._echoes.pop(data, None)
                            if waiter is not None and not waiter.done():
                                waiter.set_result(None)
                        else:
                            self._notify(Invalidation.decode(data))
            except REDIS_FAILURES as exc:
                # Caches are kept while the store is away (warm keys keep working) and dropped
                # when the channel is back, since changes may have been missed meanwhile.
                if self._invalidation_live:
                    log.warning("store_invalidation_lost", error=repr(exc))
                self._invalidation_live = False
                if self.cluster:
                    # The channel's node may be gone (a failover): ask the cluster again
                    # where things are before subscribing anew.
                    with contextlib.suppress(*REDIS_FAILURES, TimeoutError):
                        async with asyncio.timeout(2.0):
                            await cast(RedisCluster, self.client).nodes_manager.initialize()
                await asyncio.sleep(backoff.next_delay())
            except BaseException:
                self._invalidation_live = False  # nobody listens any more
                raise
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    # Untyped before redis-py 8.2, typed after: Any serves both.
                    await cast(Any, pubsub).aclose()

    script_text = staticmethod(_script)

    async def call(self, coro: Any) -> Any:
        """Await a Redis command; any Redis or socket failure becomes a StoreError."""
        try:
            return await coro
        except REDIS_FAILURES as exc:
            raise StoreError(f"redis store: {exc}") from exc

    async def ping(self) -> None:
        await self.call(self.client.ping())

    async def _check_mode(self) -> None:
        """A cluster node taken for a single Redis answers PING, then MOVED for most keys:
        refuse to start instead of failing most requests."""
        if self.cluster:
            return  # the cluster client refuses a Redis that is not a cluster node itself
        try:
            info = await self.call(self.client.info("cluster"))
        except StoreError as exc:
            if isinstance(exc.__cause__, NoPermissionError):
                return  # a least-privilege ACL user may not run INFO: nothing to check then
            raise
        if str(info.get("cluster_enabled", 0)) == "1":
            raise StoreError(
                "redis store: this Redis is a Redis Cluster node; set store.cluster: true"
            )

    async def topology(self) -> dict[str, Any] | None:
        """A cluster's state as its nodes report it, and the masters this instance cannot
        reach, by address (their slots are the ones it cannot serve)."""
        if not self.cluster:
            return None
        client = cast(RedisCluster, self.client)
        masters = client.get_primaries()
        answers = await asyncio.gather(
            *(self._node_info(client, node) for node in masters), return_exceptions=True
        )
        unreachable = sorted(
            node.name
            for node, info in zip(masters, answers, strict=True)
            if not isinstance(info, dict)
        )
        infos = [info for info in answers if isinstance(info, dict)]
        state: dict[str, Any] = {"masters": len(masters), "unreachable": unreachable}
        if infos:
            # The most troubled view: a node that sees failing slots says so.
            worst = min(infos, key=lambda info: int(info.get("cluster_slots_ok", 0)))
            state["state"] = worst.get("cluster_state", "unknown")
            state["slots_ok"] = int(worst.get("cluster_slots_ok", 0))
        else:
            state["state"] = "unreachable"
        return state

    @staticmethod
    async def _node_info(client: RedisCluster, node: ClusterNode) -> dict[str, str]:
        async with asyncio.timeout(1.0):
            info = await client.cluster_info(target_nodes=node)
        return {str(name): str(value) for name, value in info.items()}

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
        """Optimistic read-modify-write: read, then replace only if unchanged (one script,
        which also publishes the Invalidation, if any); again if another writer won."""
        for _ in range(50):
            raw = await self.call(self.client.get(name))
            if raw is None:
                return None
            result, record, message = apply(raw)
            if await self._announce(message, self._cas_set, [name], [raw, record]):
                return result
        raise StoreError(f"redis store: {name} kept changing; gave up after 50 tries")

    async def _announce(
        self,
        message: Invalidation | None,
        script: AsyncScript,
        keys: list[str],
        args: list[EncodableT],
    ) -> Any:
        """Run a write script that publishes ``message`` when it succeeds (answers true), and
        return once this instance has heard the message too.

        Read your writes: a request this instance serves right after the change must not meet
        its old cache entry. The script publishes a nonce of this write's own on the echo
        channel after the message; the listener, which handles messages in order, has dealt
        with the message when the nonce comes back. If the channel is down or slow, this
        instance drops its entry itself.
        """
        if message is None:
            args = [*args, self._channel, "", self._echo_channel, ""]  # announces nothing
            return await self.call(script(keys=keys, args=args))
        nonce = os.urandom(8).hex()
        args = [*args, self._channel, message.encode(), self._echo_channel, nonce]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echoes[nonce] = waiter
        try:
            done = await self.call(script(keys=keys, args=args))
            if done and self._invalidation_live:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ECHO_WAIT):
                        await waiter
                if not waiter.done():
                    # The subscription looks up and hears nothing (a node cut off from the
                    # others, a listener stuck): other instances' changes are missed too.
                    # Caches stop being trusted and the listener subscribes anew.
                    log.warning("store_invalidation_silent", waited=_ECHO_WAIT)
                    self._invalidation_live = False
                    self._resubscribe.set()
                    self._notify(Invalidation("all"))
            if done and not waiter.done():
                self._notify(message)
            return done
        finally:
            self._echoes.pop(nonce, None)

    # -- keys ------------------------------------------------------------------------------

    async def create_key(self, key: ApiKey) -> None:
        keys = [
            f"{self._p}:key:{key.id}",
            f"{self._p}:keyhash:{key.key_hash}",
            f"{self._p}:orgkeys:{key.org_id}",
        ]
        args: list[EncodableT] = [orjson.dumps(key.to_record()), key.id, key.created_at]
        await self._announce(Invalidation("key", key.key_hash), self._create_key, keys, args)

    async def _keys(self, ids: list[str]) -> list[ApiKey]:
        if not ids:
            return []
        # GETs, not one MGET: a cluster pipeline takes no multi-key commands, and the records
        # are one round trip either way.
        async with self.client.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.get(f"{self._p}:key:{key_id}")
            pipe.hmget(f"{self._p}:lastused", ids)
            *raws, last_used = await self.call(pipe.execute())
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
