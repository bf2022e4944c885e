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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import parse_url
from redis.exceptions import (
    AskError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from gateway.breaker import Backoff
from gateway.config.types import is_org_id
from gateway.store.base import (
    Change,
    Conflict,
    IdempotencyBegin,
    Invalidation,
    Store,
    StoreError,
)
from gateway.store.models import ApiKey, Org
from gateway.store.redis_activity import RedisActivityStore
from gateway.store.redis_keyspace import Keyspace
from gateway.store.redis_layout import move_to_current_layout
from gateway.store.redis_webhooks import RedisWebhookStore
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.store")

# What a Redis (or a cluster) that is away or failing raises: the cluster client's own errors
# (no reachable node, a slot no node serves) are not RedisErrors.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)
# The longest a write waits to hear its own announcement before acting on it alone.
_ECHO_WAIT = 1.0
# A slug claimed by a create that has not finished for this long is free again: that create
# failed midway (its process died), and every step of a live one times out within seconds.
_STALE_CLAIM_MS = 30_000
R = TypeVar("R")


def _script(name: str) -> str:
    return resources.files("gateway.store").joinpath(name).read_text()


class RedisStore(Store):
    """Records are JSON strings, laid out by ``Keyspace`` so that an org's records share its
    slot on a Redis Cluster and orgs spread over the masters. Changes are published on a
    channel that every instance listens to.
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
        replica_acks: int = 0,
        replica_ack_timeout: float = 0.5,
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
        self.names = Keyspace(key_prefix)
        self._replica_acks = replica_acks
        self._replica_ack_ms = max(1, round(replica_ack_timeout * 1000))
        self._channel = f"{key_prefix}:invalidate"
        # Where a write's nonce follows its announcement (see _announce); instances that do
        # not listen here (older ones) are unaffected.
        self._echo_channel = f"{key_prefix}:invalidate:echo"
        self._client: aioredis.Redis | None = None
        self._limits_client: aioredis.Redis | None = None
        self._acked_client: aioredis.Redis | None = None
        self._once_client: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        # False while the invalidation channel is down: caches must then not be trusted long.
        self._invalidation_live = False
        self._subscribed = asyncio.Event()
        # Writes of this instance waiting to hear their own announcement (see _announce), and
        # a request to subscribe anew when one did not.
        self._echoes: dict[str, asyncio.Future[None]] = {}
        self._resubscribe = asyncio.Event()
        self._scripts: list[AsyncScript] = []  # what write() loads when a server lacks one
        self.webhooks: RedisWebhookStore = RedisWebhookStore(self)
        self.activity: RedisActivityStore = RedisActivityStore(self)

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
        # Writes that must not run twice and have no way to tell (the request log's appends
        # and counts): sent once, never re-sent by the client library after a lost reply.
        self._once_client = self._connect(
            socket_connect_timeout=0.5,
            socket_timeout=2.0,
            health_check_interval=15,
            retry=Retry(NoBackoff(), 0),
        )
        if self._replica_acks:
            # Writes that wait for replicas: never re-sent by the client library (a re-sent
            # write would run twice, and after a retry or a redirect its WAIT would count
            # another connection's writes), and read long enough for WAIT's own timeout.
            self._acked_client = self._connect(
                socket_connect_timeout=0.5,
                socket_timeout=1.0 + self._replica_ack_ms / 1000,
                health_check_interval=15,
                retry=Retry(NoBackoff(), 0),
            )
        self._scripts.clear()
        self._claim_slug = self.register_script("claim_slug.lua")
        self._cas_set = self.register_script("cas_set.lua")
        self._create_key = self.register_script("create_key.lua")
        self._idem_begin = self.register_script("idem_begin.lua")
        self._idem_finish = self.register_script("idem_finish.lua")
        self.webhooks.register_scripts()
        self.activity.register_scripts()
        try:
            await self.ping()
            await self._check_mode()
            # Loaded on every master now rather than on first use, when one master being
            # away would hold up a write to another (a missing script is loaded everywhere).
            await self.load_scripts()
            await self.call(move_to_current_layout(self.client, self.names))
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
        if self._acked_client is not None:
            await self._acked_client.aclose()
            self._acked_client = None
        if self._once_client is not None:
            await self._once_client.aclose()
            self._once_client = None

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
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            self._resubscribe.clear()  # asked for while down: this is the new subscription
            try:
                await pubsub.subscribe(self._channel, self._echo_channel)
                # Subscribed is not yet listening (a hung node takes the SUBSCRIBE and says
                # nothing): the channel is live once a probe published on it comes back.
                probe = os.urandom(8).hex()
                await self.client.publish(self._echo_channel, probe)
                probe_deadline = loop.time() + 2 * _ECHO_WAIT
                while True:
                    if self._resubscribe.is_set():
                        self._resubscribe.clear()
                        raise ConnectionError("a write did not hear its own announcement")
                    message = await pubsub.get_message(timeout=_ECHO_WAIT)
                    if message is not None and message.get("type") == "message":
                        data = message["data"].decode()
                        if message["channel"].decode() != self._echo_channel:
                            self._notify(Invalidation.decode(data))
                        elif data == probe:
                            probe = ""
                            if not self._subscribed.is_set():
                                self._subscribed.set()
                            else:
                                self._notify(Invalidation("all"))  # messages may be missed
                            self._invalidation_live = True
                            backoff.reset()
                        else:
                            waiter = self._echoes.pop(data, None)
                            if waiter is not None and not waiter.done():
                                waiter.set_result(None)
                    if probe and loop.time() > probe_deadline:
                        raise ConnectionError("subscribed, but the channel brings nothing")
            except REDIS_FAILURES as exc:
                # Caches are kept while the store is away (warm keys keep working) and dropped
                # when the channel is back, since changes may have been missed meanwhile.
                if self._invalidation_live:
                    log.warning("store_invalidation_lost", error=repr(exc))
                self._invalidation_live = False
                if self.cluster:
                    # The channel's node may be gone (a failover): ask the cluster again
                    # where things are before subscribing anew.
                    await self._refresh_slots(self.client)
                await asyncio.sleep(backoff.next_delay())
            except BaseException:
                self._invalidation_live = False  # nobody listens any more
                raise
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    # Untyped before redis-py 8.2, typed after: Any serves both.
                    await cast(Any, pubsub).aclose()

    async def call(self, coro: Any) -> Any:
        """Await a Redis command; any Redis or socket failure becomes a StoreError."""
        try:
            return await coro
        except REDIS_FAILURES as exc:
            raise StoreError(f"redis store: {exc}") from exc

    async def pipelined(
        self, stage: Callable[[Any], object], *, raise_on_error: bool = True, once: bool = False
    ) -> list[Any]:
        """Send the commands ``stage`` puts in one pipeline; their replies. Any Redis failure,
        the pipeline's own setup included (a cluster's may ask where slots are), is a
        StoreError. ``once``: never re-sent after a lost reply (for writes that must not run
        twice); a lost reply is then a StoreError."""
        client = self._once_client if once and self._once_client is not None else self.client

        async def send() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                stage(pipe)
                return list(await pipe.execute(raise_on_error=raise_on_error))

        result: list[Any] = await self.call(send())
        return result

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

    # -- acknowledged writes ---------------------------------------------------------------

    async def write(self, stage: Callable[[Any], object], touched: Sequence[str]) -> list[Any]:
        """Send the writes ``stage`` puts in a pipeline; their replies.

        With ``replica_acks``, each node written to then waits, on the connection that wrote
        (WAIT counts what its own connection wrote), for that many replicas to have the
        writes; fewer within the timeout is a StoreError, so that nothing acknowledged to a
        client can be lost to a failover. ``touched`` names the keys written, to find those
        nodes. Such writes are sent once, on a client that neither retries nor follows a
        redirect: a failure is a StoreError (the client of the gateway tries again), and a
        cluster's map of slots is read anew.

        At most one script per call: a script the server does not have (after a restart or a
        failover) runs nothing, so the pipeline is sent again once the script is loaded.
        """
        acked = self._acked_client is not None
        client = self._acked_client or self.client
        for _ in range(2):
            try:
                async with client.pipeline(transaction=False) as pipe:
                    stage(pipe)
                    staged = len(pipe)
                    for target in self._wait_targets(client, touched):
                        pipe.execute_command(
                            "WAIT", self._replica_acks, self._replica_ack_ms, **target
                        )
                    if acked and self.cluster:
                        # A cluster pipeline's own option: a MOVED stays an error here.
                        sent = cast(Any, pipe).execute(
                            raise_on_error=False, allow_redirections=False
                        )
                    else:
                        sent = pipe.execute(raise_on_error=False)
                    replies = await self.call(sent)
            except (StoreError, *REDIS_FAILURES) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                if (
                    acked
                    and self.cluster
                    and isinstance(
                        cause,
                        OSError | RedisClusterException | RedisConnectionError | RedisTimeoutError,
                    )
                ):
                    await self._refresh_slots(client)  # a node away: the map may be old
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"redis store: {exc}") from exc
            results, waits = replies[:staged], replies[staged:]
            if any(isinstance(result, NoScriptError) for result in results):
                await self.load_scripts()
                continue
            for result in results:
                if isinstance(result, Exception):
                    if acked and self.cluster and isinstance(result, MovedError | AskError):
                        await self._refresh_slots(client)  # the map of slots is old
                    raise StoreError(f"redis store: {result}") from result
            for acked_by in waits:
                if isinstance(acked_by, Exception) or int(acked_by) < self._replica_acks:
                    raise StoreError(
                        f"redis store: the master has the write, but {acked_by!s} of the"
                        f" {self._replica_acks} replicas asked for (store.replica_acks)"
                        f" confirmed it within {self._replica_ack_ms} ms"
                    )
            return list(results)
        raise StoreError("redis store: a script could not be loaded")

    def _wait_targets(self, client: aioredis.Redis, touched: Sequence[str]) -> list[dict[str, Any]]:
        """Where the WAITs go: the node of every key written (none without replica_acks)."""
        if not self._replica_acks:
            return []
        if not self.cluster:
            return [{}]
        nodes = {}
        for name in touched:
            # Raises (a slot no node serves) as a Redis error: a StoreError to the caller.
            node = cast(RedisCluster, client).get_node_from_key(name)
            if node is not None:
                nodes[node.name] = node
        return [{"target_nodes": node} for node in nodes.values()]

    def by_server(self, names: Sequence[str]) -> list[list[str]]:
        """names grouped by the server that serves them now (one group on one Redis)."""
        if not self.cluster:
            return [list(names)]
        client = cast(RedisCluster, self.client)
        groups: dict[str, list[str]] = {}
        for name in names:
            try:
                node = client.get_node_from_key(name)
            except REDIS_FAILURES:  # a slot no node serves now: a group of its own
                node = None
            groups.setdefault(node.name if node else name, []).append(name)
        return list(groups.values())

    @staticmethod
    async def _refresh_slots(client: aioredis.Redis) -> None:
        with contextlib.suppress(*REDIS_FAILURES, TimeoutError):
            async with asyncio.timeout(2.0):
                await cast(RedisCluster, client).nodes_manager.initialize()

    async def write_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[EncodableT]
    ) -> Any:
        """Run a script that writes, acknowledged as ``write`` says; its answer."""
        if self._acked_client is None:
            # Nothing to wait for: the plain call, which reloads a missing script itself.
            return await self.call(script(keys=keys, args=args))
        stage = lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args)  # noqa: E731
        (answer,) = await self.write(stage, keys)
        return answer

    async def load_scripts(self) -> None:
        """Load every script on every master (at start, and after one of them lost them)."""
        for script in self._scripts:
            # A cluster client loads it on every master.
            await self.call(self.client.script_load(script.script))

    def register_script(self, name: str) -> AsyncScript:
        script = self.client.register_script(_script(name))
        self._scripts.append(script)
        return script

    # -- orgs ------------------------------------------------------------------------------

    async def create_org(self, org: Org) -> None:
        """The slug is claimed first (``pending``), the org written, then the claim made
        final. Listings show only orgs whose slug points to them (or that have keys), so a
        create that fails midway shows nowhere; a claim left pending by a process that died
        is taken over once stale (what that process wrote is left, unlisted: removing it
        could remove an org whose final write a failover lost)."""
        try:
            claimed, _ = await self._claim(org.id, org.slug, "claim")
            if not claimed:
                raise Conflict(f"An org with slug {org.slug!r} already exists.")
            record, listing = self.names.org(org.id), self.names.orgs()
            await self.write(
                lambda pipe: (
                    pipe.set(record, orjson.dumps(org.to_record())),
                    pipe.zadd(listing, {org.id: org.created_at}),
                ),
                [record, listing],
            )
            committed, _ = await self._claim(org.id, org.slug, "commit")
        except StoreError:
            await self._undo_org(org)
            raise
        if not committed:  # the claim went stale meanwhile, and another create took the slug
            await self._remove_org(org.id)
            raise Conflict(f"An org with slug {org.slug!r} already exists.")

    async def _claim(self, org_id: str, slug: str, action: str) -> tuple[bool, str]:
        name = self.names.slug(slug)
        args: list[EncodableT] = [org_id, _STALE_CLAIM_MS, action]
        done, stale = await self.write_script(self._claim_slug, [name], args)
        return bool(done), stale.decode()

    async def _undo_org(self, org: Org) -> None:
        """After a create failed: its slug claim and whatever it wrote, each step on its own
        (one that fails does not keep the others from being tried)."""
        with contextlib.suppress(StoreError):
            slug = self.names.slug(org.slug)
            await self.call(self._claim_slug(keys=[slug], args=[org.id, _STALE_CLAIM_MS, "drop"]))
        await self._remove_org(org.id)

    async def _remove_org(self, org_id: str) -> None:
        """The record and listing entry of an org whose create never finished."""
        for removal in (
            self.client.delete(self.names.org(org_id)),
            self.client.zrem(self.names.orgs(), org_id),
        ):
            with contextlib.suppress(StoreError):
                await self.call(removal)

    async def get_org(self, ref: str) -> Org | None:
        org_id = ref
        if not is_org_id(ref):
            found = await self.call(self.client.get(self.names.slug(ref)))
            if found is None or found.startswith(b"pending "):
                return None
            org_id = found.decode()
        raw = await self.call(self.client.get(self.names.org(org_id)))
        return Org.from_record(orjson.loads(raw)) if raw else None

    async def list_orgs(self) -> list[Org]:
        ids = await self.call(self.client.zrange(self.names.orgs(), 0, -1))
        if not ids:
            return []
        # GETs, not one MGET: the records are in the slots of their orgs.
        raws = await self.pipelined(
            lambda pipe: [pipe.get(self.names.org(org_id.decode())) for org_id in ids]
        )
        orgs = [Org.from_record(orjson.loads(r)) for r in raws if r]
        # Only orgs whose create finished: their slug points to them.
        owners = await self.pipelined(
            lambda pipe: [pipe.get(self.names.slug(org.slug)) for org in orgs]
        )
        unsure = [o for o, owner in zip(orgs, owners, strict=True) if owner != o.id.encode()]
        keep = {o.id for o in orgs} - {o.id for o in unsure}
        if unsure:
            # Or that have keys: a key is made only for an org whose create was answered, so
            # its slug's final write was lost (a failover without replica_acks). Put it back
            # where the slug is free or still claimed for it.
            counts = await self.pipelined(
                lambda pipe: [pipe.zcard(self.names.org_keys(o.id)) for o in unsure]
            )
            for org, count in zip(unsure, counts, strict=True):
                if count:
                    keep.add(org.id)
                    with contextlib.suppress(StoreError):
                        await self.call(self.client.set(self.names.slug(org.slug), org.id, nx=True))
                        await self._claim(org.id, org.slug, "commit")
        return [org for org in orgs if org.id in keep]

    async def update_org(self, org_id: str, change: Change[Org]) -> Org | None:
        def apply(raw: bytes) -> tuple[Org, bytes, Invalidation]:
            org = change(Org.from_record(orjson.loads(raw)))
            return org, orjson.dumps(org.to_record()), Invalidation("org", org.id)

        return await self.update_record(self.names.org(org_id), apply)

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
            done = await self.write_script(script, keys, args)
            return done
        nonce = os.urandom(8).hex()
        args = [*args, self._channel, message.encode(), self._echo_channel, nonce]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echoes[nonce] = waiter
        try:
            done = await self.write_script(script, keys, args)
            if done and self._invalidation_live:
                # wait(), not a timeout around the future: that would cancel it, and a
                # cancelled future is done as well as a heard one.
                await asyncio.wait((waiter,), timeout=_ECHO_WAIT)
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
        """The pointers to the key first, its record last: a create that fails midway
        leaves pointers to nothing, never a key that cannot be found."""
        names = self.names
        by_id, by_hash = names.key_org(key.id), names.key_hash(key.key_hash)
        await self.write(
            lambda pipe: (
                pipe.set(by_id, key.org_id),
                pipe.set(by_hash, f"{key.org_id}:{key.id}"),
            ),
            [by_id, by_hash],
        )
        keys = [names.key(key.org_id, key.id), names.org_keys(key.org_id)]
        args: list[EncodableT] = [orjson.dumps(key.to_record()), key.id, key.created_at]
        await self._announce(Invalidation("key", key.key_hash), self._create_key, keys, args)

    async def _keys(self, org_id: str, ids: list[str]) -> list[ApiKey]:
        if not ids:
            return []

        def stage(pipe: Any) -> None:
            for key_id in ids:
                pipe.get(self.names.key(org_id, key_id))
            pipe.zmscore(self.names.last_used(org_id), ids)

        *raws, last_used = await self.pipelined(stage)
        keys = []
        for raw, used in zip(raws, last_used, strict=True):
            if raw is None:
                continue
            record = orjson.loads(raw)
            if used is not None:
                record["last_used_at"] = max(record.get("last_used_at") or 0, float(used))
            keys.append(ApiKey.from_record(record))
        return keys

    async def _key_org(self, key_id: str) -> str | None:
        org_id = await self.call(self.client.get(self.names.key_org(key_id)))
        return org_id.decode() if org_id else None

    async def get_key(self, key_id: str) -> ApiKey | None:
        org_id = await self._key_org(key_id)
        found = await self._keys(org_id, [key_id]) if org_id else []
        return found[0] if found else None

    async def find_key(self, key_hash: str) -> ApiKey | None:
        pointer = await self.call(self.client.get(self.names.key_hash(key_hash)))
        if not pointer:
            return None
        org_id, _, key_id = pointer.decode().partition(":")
        found = await self._keys(org_id, [key_id])
        return found[0] if found else None

    async def list_keys(
        self, org_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ApiKey]:
        stop = -1 if limit is None else offset + max(1, limit) - 1
        ids = await self.call(self.client.zrange(self.names.org_keys(org_id), offset, stop))
        keys = await self._keys(org_id, [i.decode() for i in ids])
        await self._repair_pointers(keys)
        return keys

    async def _repair_pointers(self, keys: list[ApiKey]) -> None:
        """Write back a key's pointers where they are missing. They live on other masters than
        the record, and a failover without replica_acks can lose one and keep the others: the
        key could not be revoked by id, or would be refused while listed. Listings (the
        admin's, and the key-event scan's) put them back."""
        if not keys:
            return

        def stage(pipe: Any) -> None:
            for key in keys:
                pipe.set(self.names.key_org(key.id), key.org_id, nx=True)
                pipe.set(self.names.key_hash(key.key_hash), f"{key.org_id}:{key.id}", nx=True)

        with contextlib.suppress(StoreError):
            await self.pipelined(stage)

    async def update_key(self, key_id: str, change: Change[ApiKey]) -> ApiKey | None:
        def apply(raw: bytes) -> tuple[ApiKey, bytes, Invalidation]:
            key = change(ApiKey.from_record(orjson.loads(raw)))
            record = key.to_record()
            record.pop("last_used_at", None)  # kept in its own sorted set, moved forward only
            return key, orjson.dumps(record), Invalidation("key", key.key_hash)

        org_id = await self._key_org(key_id)
        if org_id is None:
            return None
        return await self.update_record(self.names.key(org_id, key_id), apply)

    async def touch_keys(self, last_used: Mapping[str, tuple[str, float]]) -> None:
        by_org: dict[str, dict[str, float]] = {}
        for key_id, (org_id, at) in last_used.items():
            by_org.setdefault(org_id, {})[key_id] = at
        if not by_org:
            return
        # GT: instances flush at different moments; a time only ever moves forward.
        await self.pipelined(
            lambda pipe: [
                pipe.zadd(self.names.last_used(org_id), times, gt=True)
                for org_id, times in by_org.items()
            ]
        )

    # -- idempotency -----------------------------------------------------------------------

    def _idem_key(self, scope: str) -> str:
        # scope is "<org id>:<key hash>": the org is the hash tag, like the org's rate limits.
        org, _, rest = scope.partition(":")
        return self.names.idempotency(org, rest)

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
        args: list[EncodableT] = (
            [token, "release", b"", 1]
            if response is None
            else [token, "complete", response, max(1, int(keep_seconds * 1000))]
        )
        # Acknowledged like a key: the stored response is what makes a retry a replay.
        name = self._idem_key(scope)
        done = await self.write_script(self._idem_finish, [name], args)
        return bool(done)
