"""The store on a Redis Cluster: settings, readiness per node, and a master failing over under
load. (Every store feature also runs on the cluster from the parametrized suites.)"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.config import StoreConfig
from gateway.store import Invalidation, Org, Store, StoreError, open_store
from gateway.store.redis_keyspace import Keyspace
from tests.conftest import (
    GatewayFactory,
    Upstream,
    UpstreamFactory,
    make_config,
    unique_prefix,
)
from tests.helpers import Admin, eventually
from tests.redis_cluster import RedisCluster, start_cluster
from tests.store.test_store import make_key, make_org
from tests.webhooks.test_delivery import Receiver, subscribe


@pytest.fixture
def own_cluster(tmp_path: Path) -> Any:
    """A cluster of this test's own, whose nodes it may kill."""
    cluster = start_cluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"urls": ["redis://a:1", "redis://b:2"]}, "urls: only with cluster: true"),
        (
            {"cluster": True, "url": "redis://a:1", "urls": ["redis://b:2"]},
            "url: give url or urls, not both",
        ),
        (
            {"cluster": True, "url": None, "urls": ["redis://a:1", "rediss://b:2"]},
            "urls: all redis:// or all rediss://",
        ),
        ({"cluster": True, "url": "unix:///run/redis.sock"}, "not unix sockets"),
        ({"backend": "local", "cluster": True}, "cluster: only with backend: redis"),
        ({"backend": "local", "replica_acks": 1}, "replica_acks: only with backend: redis"),
        ({"replica_acks": 6}, "replica_acks"),
        ({"replica_acks": 1, "replica_ack_timeout": "20s"}, "replica_ack_timeout"),
        ({"url": "redis://127.0.0.1:99999"}, "is not a port"),
        ({"url": "redis://:secret@/0"}, "names no host"),
        # SECURITY: URL options override the client's settings.
        ({"url": "rediss://h:6380/0?ssl_cert_reqs=none"}, "TLS options are not taken"),
        ({"cluster": True, "url": "redis://h:7000/0?socket_timeout=1"}, "takes no options"),
        ({"cluster": True, "url": "redis://h:7000/2"}, "one database, 0"),
        ({"url": "http://127.0.0.1:6379"}, "url: must start with redis://"),
        ({"username": "gateway"}, "username: needs password"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file: only with a rediss:// url"),
        (
            {"url": "rediss://127.0.0.1:6379", "tls_ca_file": "/nonexistent/ca.pem"},
            "tls_ca_file: cannot read '/nonexistent/ca.pem'",
        ),
    ],
)
def test_redis_settings_that_cannot_work_are_refused_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    section = {"backend": "redis", "url": "redis://127.0.0.1:6379", **fields}
    with pytest.raises(ValueError, match=message):
        StoreConfig.model_validate(section)


async def test_a_cluster_node_taken_for_one_redis_is_refused_at_start(
    redis_cluster: RedisCluster,
) -> None:
    """It would answer PING, then MOVED for two thirds of the keys."""
    store = open_store(StoreConfig(backend="redis", url=redis_cluster.url, key_prefix="x"))
    with pytest.raises(StoreError, match=r"set store\.cluster: true"):
        await store.startup()


def _slot_master(cluster: RedisCluster, key: str) -> str:
    """The address of the master that serves ``key``'s slot now."""
    client = redis.RedisCluster.from_url(cluster.url)
    try:
        return str(client.get_node_from_key(key).name)
    finally:
        client.close()


async def test_readiness_names_a_master_it_cannot_reach(
    gateway_factory: GatewayFactory, upstream: Upstream, own_cluster: RedisCluster
) -> None:
    store = {"backend": "redis", "cluster": True, "urls": own_cluster.urls}
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/a", "upstream": "app"}],
            store={**store, "key_prefix": unique_prefix()},
        )
    )
    async with gw.session.get(f"{gw.admin_url}/readyz") as r:
        ready = (await r.json())["data"]
    cluster_state = ready["store"]["cluster"]
    assert ready["store"]["ok"] is True, ready
    assert cluster_state == {"masters": 3, "unreachable": [], "state": "ok", "slots_ok": 16384}
    victim = own_cluster.masters()[0]
    victim.stop()

    async def reported() -> Any:
        async with gw.session.get(f"{gw.admin_url}/readyz") as r:
            body = (await r.json())["data"]
        return victim.address in body["store"]["cluster"]["unreachable"] and body

    body = await eventually(reported, 5)
    assert body["store"]["ok"] is False
    # Still serving: a store problem is reported, it does not take the instance out.
    assert body["status"] == "ready"


async def test_a_master_failing_over_under_load_loses_nothing_acknowledged_and_recovers(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    own_cluster: RedisCluster,
) -> None:
    """The master holding an org's records is killed while requests flow and keys and webhook
    events are being created: requests in the switch are 200 (warm keys) or 503 (never 401 or
    500); every key and event that was acknowledged survives the promotion (replica_acks: 1)
    and every event is delivered; service is whole again within seconds of the promotion."""
    prefix = unique_prefix()
    store = {
        "backend": "redis",
        "cluster": True,
        "url": own_cluster.url,
        "key_prefix": prefix,
        "replica_acks": 1,
    }
    receiver = await Receiver().start(upstream_factory)
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/a", "upstream": "app", "auth": "key"}],
        store=store,
        plans={"free": {"rate_limit": {"requests": 100_000, "per": "1m"}}},
        webhooks={"allow_private_targets": True, "poll_interval": "100ms", "jitter": 0},
    )
    gw = await gateway_factory(config)
    admin = Admin(gw)
    names = Keyspace(prefix)
    # An org whose records and webhook queue are on one master: the one to be killed.
    for i in range(30):
        org = await admin.org(f"acme-{i}")
        victim_address = _slot_master(own_cluster, names.org(org["id"]))
        shard = names.webhooks(names.webhook_shard(org["id"]))
        if _slot_master(own_cluster, shard + "due") == victim_address:
            break
    else:
        raise AssertionError("no org of 30 has its records and its webhooks on one master")
    slug = org["slug"]
    await subscribe(admin, receiver.url, ["invoice.created"], org=slug)
    keys = [await admin.key(slug) for _ in range(5)]
    statuses: list[tuple[float, int]] = []
    acknowledged_keys: list[str] = []
    acknowledged_events: list[str] = []
    refused_writes: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        i = 0
        while not stop.is_set():
            secret = keys[i % len(keys)]["secret"]
            i += 1
            async with gw.session.get(
                f"{gw.url}/a", headers={"Authorization": f"Bearer {secret}"}
            ) as r:
                statuses.append((time.monotonic(), r.status))
            await asyncio.sleep(0.01)

    async def writes() -> None:
        while not stop.is_set():
            status, body = await admin.call("POST", f"/admin/orgs/{slug}/keys", {"name": "live"})
            if status == 201:
                acknowledged_keys.append(body["data"]["id"])
            else:
                refused_writes.append(status)
            status, body = await admin.call(
                "POST", "/admin/events", {"org": slug, "type": "invoice.created", "data": {}}
            )
            if status == 202:
                acknowledged_events.append(body["data"]["id"])
            else:
                refused_writes.append(status)
            await asyncio.sleep(0.02)

    loader = asyncio.create_task(load())
    writer = asyncio.create_task(writes())
    await asyncio.sleep(0.5)
    victim = next(node for node in own_cluster.nodes if node.address == victim_address)
    killed_at = time.monotonic()
    victim.stop()

    def promoted() -> bool:
        masters = own_cluster.masters()
        return len(masters) == 3 and victim not in masters

    await eventually(lambda: asyncio.to_thread(promoted), 20, interval=0.1)
    promoted_at = time.monotonic()

    async def whole() -> bool:
        status, _ = await admin.call("POST", f"/admin/orgs/{slug}/keys", {"name": "after"})
        return status == 201

    # The promoted master has no replica yet: a write that must reach one is refused (503),
    # never acknowledged on one copy only ...
    await asyncio.sleep(0.5)
    assert not await whole()
    # ... until the failed node is back: it rejoins as the new master's replica.
    await asyncio.to_thread(victim.start)
    await eventually(whole, 20, interval=0.1)
    recovered_at = time.monotonic()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(loader, writer)
    for key in keys:
        async with gw.session.get(
            f"{gw.url}/a", headers={"Authorization": f"Bearer {key['secret']}"}
        ) as r:
            assert r.status == 200
    # The gateway's key cache is warm: ask the promoted replica itself.
    fresh = open_store(StoreConfig.model_validate(store))
    await fresh.startup()
    try:
        for key_id in [key["id"] for key in keys] + acknowledged_keys:
            assert await fresh.get_key(key_id) is not None, key_id
    finally:
        await fresh.shutdown()
    # Every acknowledged event arrives (at least once; its id tells repeats apart).
    await eventually(
        lambda: set(acknowledged_events) <= {orjson.loads(r.body)["id"] for r in receiver.received},
        15,
        interval=0.2,
    )
    during = [status for at, status in statuses if at >= killed_at]
    assert set(during) <= {200, 503}, sorted(set(during))
    assert set(refused_writes) <= {503}, sorted(set(refused_writes))
    assert statuses[-1][1] == 200
    print(
        f"failover: promoted {promoted_at - killed_at:.1f}s after the kill, writes whole"
        f" {recovered_at - promoted_at:.1f}s after that (the failed node restarted as its"
        f" replica 0.5s after the promotion); {len(during)} requests in the switch,"
        f" {during.count(503)} answered 503; {len(acknowledged_keys)} keys and"
        f" {len(acknowledged_events)} events acknowledged, all kept;"
        f" {len(refused_writes)} writes answered 503"
    )


async def test_a_write_acknowledged_only_once_a_replica_has_it(own_cluster: RedisCluster) -> None:
    """With replica_acks, a write the master has but its replica does not (the replica
    hangs) is refused as a store error (503), never answered as done; without it, or once
    the replica is back, it succeeds."""
    prefix = unique_prefix()
    section = {
        "backend": "redis",
        "cluster": True,
        "url": own_cluster.url,
        "key_prefix": prefix,
        "replica_acks": 1,
        # Not shorter: a replica on a machine as busy as a CI run's takes its time to answer.
        "replica_ack_timeout": "1s",
    }
    store = open_store(StoreConfig.model_validate(section))
    await store.startup()
    try:
        org = make_org(slug="acked")
        await store.create_org(org)
        await store.create_key(make_key(org))
        names = Keyspace(prefix)
        master_address = _slot_master(own_cluster, names.org(org.id))
        master = next(n for n in own_cluster.nodes if n.address == master_address)
        replica = own_cluster.replica_of(master)
        replica.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="replica_acks"):
                await store.create_key(make_key(org))
            assert time.monotonic() - started < 3.0  # the timeout, not a hang
            with pytest.raises(StoreError, match="replica_acks"):
                await store.update_org(org.id, lambda o: o)
            # Not asked to wait: the master's word is enough.
            eager = open_store(StoreConfig.model_validate({**section, "replica_acks": 0}))
            await eager.startup()
            try:
                await eager.create_key(make_key(org))
            finally:
                await eager.shutdown()
        finally:
            replica.resume()
        await eventually(lambda: _created(store, org), 10, interval=0.2)
    finally:
        await store.shutdown()


async def _created(store: Store, org: Org) -> bool:
    try:
        await store.create_key(make_key(org))
    except StoreError:
        return False
    return True


async def test_a_write_that_is_not_heard_stops_the_caches_being_trusted(
    own_cluster: RedisCluster,
) -> None:
    """The node that carries the invalidation channel hangs (its connection stays open and
    says nothing): the next write does not hear its own announcement, so the instance stops
    trusting its caches at once and subscribes anew, and is live again after the failover."""
    prefix = unique_prefix()
    section = {"backend": "redis", "cluster": True, "url": own_cluster.url, "key_prefix": prefix}
    store = open_store(StoreConfig.model_validate(section))
    heard: list[Invalidation] = []
    store.subscribe(heard.append)
    await store.startup()
    try:
        channel_master = _slot_master(own_cluster, f"{prefix}:invalidate")
        # An org whose records live on another master, which keeps answering.
        org = next(
            o
            for o in (make_org(slug=f"o{i}") for i in range(64))
            if _slot_master(own_cluster, Keyspace(prefix).org(o.id)) != channel_master
        )
        await store.create_org(org)
        assert store.invalidation_live
        node = next(n for n in own_cluster.nodes if n.address == channel_master)
        node.pause()
        try:
            heard.clear()
            started = time.monotonic()
            await store.update_org(org.id, lambda o: dataclasses.replace(o, name="Renamed"))
            waited = time.monotonic() - started
            assert store.invalidation_live is False
            assert Invalidation("all") in heard  # every cache entry dropped
            assert Invalidation("org", org.id) in heard  # and the change itself applied
            assert 0.9 < waited < 3.0
            # The cluster promotes the hung node's replica; the listener follows.
            await eventually(lambda: store.invalidation_live is True, 20, interval=0.2)
        finally:
            node.resume()
    finally:
        await store.shutdown()
