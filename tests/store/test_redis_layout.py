"""The redis store's keyspace: spread over a cluster's masters by org, slugs claimed safely,
and a dataset written by an earlier release (everything under ``{meta}`` and ``{wh}``) moved
into this layout at start, with nothing lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis

from gateway.config import StoreConfig
from gateway.store import Conflict, new_id, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_keyspace import Keyspace
from gateway.store.webhook_base import Outcome
from gateway.store.webhook_models import Attempt, Endpoint, Event, Secret
from tests.conftest import raw_redis, unique_prefix
from tests.redis_cluster import RedisCluster
from tests.store.test_store import make_key, make_org

# Every test here runs on one Redis and on the cluster (the store_config fixture's two
# Redis kinds).
on_redis_kinds = pytest.mark.parametrize("store_config", ["redis", "cluster"], indirect=True)


@pytest.fixture
async def opened(store_config: dict[str, Any]) -> AsyncIterator[tuple[RedisStore, redis.Redis]]:
    """A started store on store_config, and a client to look at (and tamper with) its Redis."""
    store = _open(store_config)
    await store.startup()
    client = raw_redis(store_config)
    yield store, client
    client.close()
    await store.shutdown()


def _open(section: dict[str, Any]) -> RedisStore:
    store = open_store(StoreConfig.model_validate(section))
    assert isinstance(store, RedisStore)
    return store


async def test_orgs_keys_and_webhook_queues_spread_over_every_master(
    redis_cluster: RedisCluster,
) -> None:
    section = {
        "backend": "redis",
        "cluster": True,
        "url": redis_cluster.url,
        "key_prefix": unique_prefix(),
    }
    store = _open(section)
    await store.startup()
    try:
        orgs = [make_org(slug=f"org-{i}") for i in range(24)]
        for org in orgs:
            await store.create_org(org)
            await store.create_key(make_key(org))
            endpoint = Endpoint(
                id=new_id("wh"),
                org_id=org.id,
                url="https://hooks.example.com/in",
                events=("invoice.created",),
                secrets=(Secret("enc:v1:sealed"),),
                created_at=time.time(),
            )
            assert await store.webhooks.create_endpoint(endpoint, None)
    finally:
        await store.shutdown()
    client = raw_redis(section)
    try:
        names = Keyspace(section["key_prefix"])
        masters = {node.address for node in redis_cluster.masters()}

        def masters_of(keys: list[str]) -> set[str]:
            return {str(client.get_node_from_key(k).name) for k in keys}  # type: ignore[attr-defined]

        assert masters_of([names.org(o.id) for o in orgs]) == masters
        written = [k.decode() for k in client.scan_iter(match=f"{section['key_prefix']}:*")]
        endpoints = [k for k in written if ":ep:" in k]
        assert len(endpoints) == len(orgs)
        assert masters_of(endpoints) == masters
        hashes = [k for k in written if ":keyhash:" in k]
        assert len(hashes) == len(orgs)
        assert masters_of(hashes) == masters
        # No single tag that a kind of traffic all goes through.
        assert not [k for k in written if "{meta}" in k or "{wh}" in k]
    finally:
        client.close()


@on_redis_kinds
async def test_a_slug_claimed_by_a_create_that_died_is_taken_over_once_stale(
    store_config: dict[str, Any], opened: tuple[RedisStore, redis.Redis]
) -> None:
    store, client = opened
    names = Keyspace(store_config["key_prefix"])
    now_ms = int(time.time() * 1000)
    client.set(names.slug("fresh"), f"pending org_other {now_ms}")
    # A create that died after writing its org, before making the slug final.
    orphan = make_org(slug="stale")
    client.set(names.slug("stale"), f"pending {orphan.id} {now_ms - 60_000}")
    client.set(names.org(orphan.id), orjson.dumps(orphan.to_record()))
    client.zadd(names.orgs(), {orphan.id: orphan.created_at})
    assert await store.list_orgs() == []  # never listed: its create did not finish
    with pytest.raises(Conflict):
        await store.create_org(make_org(slug="fresh"))
    assert await store.get_org("fresh") is None  # a claim in progress is no org yet
    org = make_org(slug="stale")
    await store.create_org(org)
    assert await store.get_org("stale") == org
    assert client.get(names.slug("stale")) == org.id.encode()
    assert await store.list_orgs() == [org]  # the dead create's org stays unlisted
    with pytest.raises(Conflict):
        await store.create_org(make_org(slug="stale"))
    # Creating many orgs with one slug at once: exactly one wins.
    racers = [make_org(slug="race") for _ in range(8)]
    results = await asyncio.gather(*(store.create_org(o) for o in racers), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not None)
    winner = racers[results.index(None)]
    assert await store.get_org("race") == winner
    assert [o.id for o in await store.list_orgs() if o.slug == "race"] == [winner.id]


def _write_old_layout(client: redis.Redis, prefix: str, now: float) -> dict[str, Any]:
    """A dataset as releases before this layout wrote it: an org with a used key, a webhook
    endpoint with one delivery pending (an attempt behind it) and one delivered."""
    meta, wh = f"{prefix}:{{meta}}:", f"{prefix}:{{wh}}:"
    org = make_org(slug="legacy")
    key = make_key(org)
    client.set(meta + f"org:{org.id}", orjson.dumps(org.to_record()))
    client.set(meta + f"orgslug:{org.slug}", org.id)
    client.zadd(meta + "orgs", {org.id: org.created_at})
    record = key.to_record()
    record.pop("last_used_at")
    client.set(meta + f"key:{key.id}", orjson.dumps(record))
    client.set(meta + f"keyhash:{key.key_hash}", key.id)
    client.zadd(meta + f"orgkeys:{org.id}", {key.id: key.created_at})
    client.hset(meta + "lastused", key.id, repr(now - 5))
    endpoint = Endpoint(
        id=new_id("wh"),
        org_id=org.id,
        url="https://hooks.example.com/in",
        events=("invoice.created",),
        secrets=(Secret("enc:v1:sealed"),),
        created_at=now - 100,
    )
    client.set(wh + f"ep:{endpoint.id}", orjson.dumps(endpoint.to_record()))
    client.zadd(wh + f"orgeps:{org.id}", {endpoint.id: endpoint.created_at})
    deliveries = {}
    gone = new_id("wh")  # an endpoint deleted while a delivery to it was pending
    for state in ("pending", "succeeded", "orphaned"):
        delivery_id, event_id = new_id("dlv"), new_id("evt")
        created = now - 50 if state != "succeeded" else now - 60
        endpoint_id = gone if state == "orphaned" else endpoint.id
        client.hset(
            wh + f"dlv:{delivery_id}",
            mapping={
                "id": delivery_id,
                "endpoint_id": endpoint_id,
                "org_id": org.id,
                "event_id": event_id,
                "event_type": "invoice.created",
                "payload": b'{"id":"' + event_id.encode() + b'"}',
                "created_at": repr(created),
                "status": "pending" if state == "orphaned" else state,
                "attempts": "1",
                "next_at": repr(now - 1),
                "lease_until": "0",
                "token": "",
                "manual": "0",
                "last_status": "500" if state == "pending" else "204",
                "updated_at": repr(now - 2),
            },
        )
        attempt = Attempt(1, now - 2, 0.1, 500 if state == "pending" else 204, state != "pending")
        client.rpush(wh + f"dlvlog:{delivery_id}", attempt.encode())
        client.zadd(wh + f"epdlv:{endpoint_id}", {delivery_id: created})
        event = Event(event_id, org.id, "invoice.created", created, b"{}")
        client.set(wh + f"evt:{event_id}", orjson.dumps(event.to_record()), px=3_600_000)
        if state != "succeeded":
            client.zadd(wh + "due", {delivery_id: now - 1})
            client.zadd(wh + f"q:{endpoint_id}", {delivery_id: now - 1})
            client.zadd(wh + "ready", {endpoint_id: now - 1})
        else:
            client.pexpire(wh + f"dlv:{delivery_id}", 3_600_000)
            client.pexpire(wh + f"dlvlog:{delivery_id}", 3_600_000)
        deliveries[state] = delivery_id
    return {"org": org, "key": key, "endpoint": endpoint, "deliveries": deliveries}


def _old_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return [k for k in client.scan_iter(match=f"{prefix}:*") if b"{meta}" in k or b"{wh}" in k]


@on_redis_kinds
async def test_a_dataset_of_the_earlier_layout_is_moved_at_start_with_nothing_lost(
    store_config: dict[str, Any],
) -> None:
    prefix = store_config["key_prefix"]
    now = time.time()
    client = raw_redis(store_config)
    try:
        old = _write_old_layout(client, prefix, now)
        # Two instances start at once: one moves the data, the other waits for it.
        stores = [_open(store_config), _open(store_config)]
        await asyncio.gather(*(s.startup() for s in stores))
        store = stores[0]
        org, key, endpoint = old["org"], old["key"], old["endpoint"]
        assert await store.get_org("legacy") == org
        assert await store.get_org(org.id) == org
        assert [o.id for o in await store.list_orgs()] == [org.id]
        found = await stores[1].find_key(key.key_hash)
        assert found is not None
        assert found.id == key.id
        assert found.last_used_at == pytest.approx(now - 5)
        assert [k.id for k in await store.list_keys(org.id)] == [key.id]
        assert await store.webhooks.list_endpoints(org.id) == [endpoint]
        assert await store.webhooks.get_endpoint(endpoint.id) == endpoint
        history = await store.webhooks.list_deliveries(endpoint.id, 10)
        assert [d.id for d in history] == [
            old["deliveries"]["pending"],
            old["deliveries"]["succeeded"],
        ]
        assert [len(d.history) for d in history] == [1, 1]
        # A finished delivery keeps its expiry.
        shard = Keyspace(prefix).webhooks(Keyspace(prefix).webhook_shard(org.id))
        ttl = client.pttl(shard + f"dlv:{old['deliveries']['succeeded']}")
        assert 0 < ttl <= 3_600_000
        # Pending deliveries (one to an endpoint deleted before the move) are claimed and
        # finished as if they had always been here.
        assert await store.webhooks.queue_depth(now) == (2, 2)
        claimed = await stores[1].webhooks.claim(now, now + 30, 10, "t", per_endpoint=5, busy={})
        pending = {old["deliveries"]["pending"], old["deliveries"]["orphaned"]}
        assert {d.id for d in claimed} == pending
        assert {d.attempts for d in claimed} == {1}
        done = Outcome(Attempt(2, now, 0.1, 204, True), "succeeded")
        for delivery in claimed:
            assert await stores[1].webhooks.finish(delivery, "t", done, now, 3600)
        assert await store.webhooks.queue_depth(now) == (0, 0)
        event = await store.webhooks.get_event(claimed[0].event_id)
        assert event is not None
        assert (event.id, event.org_id) == (claimed[0].event_id, org.id)
        # The keys of the earlier layout are gone, and the layout is marked as moved.
        assert _old_keys(client, prefix) == []
        assert client.get(Keyspace(prefix).layout()) == b"2"
        for s in stores:
            await s.shutdown()
        # A mover that died after the mark left old keys behind: the next start removes them.
        client.zadd(f"{prefix}:{{meta}}:orgs", {"org_stray": 1.0})
        client.set(f"{prefix}:{{wh}}:ep:wh_stray", b"{}")
        again = _open(store_config)
        await again.startup()
        assert await again.get_org("legacy") == org
        assert _old_keys(client, prefix) == []
        await again.shutdown()
    finally:
        client.close()


@on_redis_kinds
async def test_a_key_whose_pointer_by_id_was_lost_is_found_again_after_a_listing(
    store_config: dict[str, Any], opened: tuple[RedisStore, redis.Redis]
) -> None:
    """The pointer lives on another master than the key: a failover can lose it alone."""
    store, client = opened
    org = make_org()
    await store.create_org(org)
    key = make_key(org)
    await store.create_key(key)
    client.delete(Keyspace(store_config["key_prefix"]).key_org(key.id))
    assert await store.get_key(key.id) is None
    assert [k.id for k in await store.list_keys(org.id)] == [key.id]
    found = await store.get_key(key.id)
    assert found is not None
    assert found.id == key.id


@on_redis_kinds
async def test_an_org_whose_slug_was_lost_but_has_keys_is_listed_and_found_again(
    store_config: dict[str, Any], opened: tuple[RedisStore, redis.Redis]
) -> None:
    """A failover without replica_acks can lose the slug's final write of an org that was
    answered 201 and given keys: it stays listed, and the listing puts its slug back."""
    store, client = opened
    org = make_org(slug="kept")
    await store.create_org(org)
    await store.create_key(make_key(org))
    client.delete(Keyspace(store_config["key_prefix"]).slug("kept"))
    assert await store.get_org("kept") is None
    assert await store.list_orgs() == [org]
    assert await store.get_org("kept") == org
