"""The store on a Redis Cluster: settings, readiness per node, and a master failing over under
load. (Every store feature also runs on the cluster from the parametrized suites.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.config import StoreConfig
from gateway.store import StoreError, open_store
from tests.conftest import (
    GatewayFactory,
    Upstream,
    make_config,
    unique_prefix,
)
from tests.helpers import Admin, eventually
from tests.redis_cluster import RedisCluster, start_cluster


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


async def test_a_master_failing_over_under_load_loses_no_key_and_recovers(
    gateway_factory: GatewayFactory, upstream: Upstream, own_cluster: RedisCluster
) -> None:
    """The master holding the keys is killed while requests flow: keys created before stay,
    requests in the switch are 200 (warm keys) or 503 (never 401 or 500), and service is
    whole again, new keys included, within seconds of the replica's promotion."""
    prefix = unique_prefix()
    store = {"backend": "redis", "cluster": True, "url": own_cluster.url, "key_prefix": prefix}
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/a", "upstream": "app", "auth": "key"}],
        store=store,
        plans={"free": {"rate_limit": {"requests": 100_000, "per": "1m"}}},
    )
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org("acme")
    keys = [await admin.key("acme") for _ in range(5)]
    statuses: list[tuple[float, int]] = []
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

    loader = asyncio.create_task(load())
    await asyncio.sleep(0.5)
    victim_address = _slot_master(own_cluster, f"{prefix}:{{meta}}:x")
    victim = next(node for node in own_cluster.nodes if node.address == victim_address)
    killed_at = time.monotonic()
    victim.stop()

    def promoted() -> bool:
        masters = own_cluster.masters()
        return len(masters) == 3 and victim not in masters

    await eventually(lambda: asyncio.to_thread(promoted), 20, interval=0.1)
    promoted_at = time.monotonic()

    # Whole again: a new key can be made and used, and every old one still works.
    async def whole() -> bool:
        status, _ = await admin.call("POST", "/admin/orgs/acme/keys", {"name": "after"})
        return status == 201

    await eventually(whole, 10, interval=0.1)
    recovered_at = time.monotonic()
    await asyncio.sleep(0.5)
    stop.set()
    await loader
    for key in keys:
        async with gw.session.get(
            f"{gw.url}/a", headers={"Authorization": f"Bearer {key['secret']}"}
        ) as r:
            assert r.status == 200
    # The gateway's key cache is warm: ask the promoted replica itself.
    fresh = open_store(StoreConfig.model_validate(store))
    await fresh.startup()
    try:
        for key in keys:
            assert await fresh.get_key(key["id"]) is not None, key["id"]
    finally:
        await fresh.shutdown()
    during = [status for at, status in statuses if at >= killed_at]
    assert set(during) <= {200, 503}, sorted(set(during))
    assert statuses[-1][1] == 200
    print(
        f"failover: promoted {promoted_at - killed_at:.1f}s after the kill, writes whole"
        f" {recovered_at - promoted_at:.1f}s after that; {len(during)} requests in the switch,"
        f" {during.count(503)} answered 503"
    )
