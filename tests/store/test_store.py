"""The store contract: every backend passes the same suite, against a real Redis and SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway.config import StoreConfig
from gateway.store import ApiKey, Conflict, Invalidation, Org, Store, new_id, open_store
from tests.conftest import FakeClock, RedisServer, StoreFactory, unique_prefix
from tests.helpers import eventually


def make_org(slug: str = "acme") -> Org:
    return Org(id=new_id("org"), slug=slug, name="Acme Pumps", plan="free", created_at=time.time())


def make_key(org: Org, **changes: object) -> ApiKey:
    key = ApiKey(
        id=new_id("key"),
        org_id=org.id,
        name="sync",
        scopes=("contacts:read",),
        environment="live",
        prefix="fw_live_AbCd",
        last4="wxyz",
        key_hash=new_id("h"),
        created_at=time.time(),
        allowed_ips=("203.0.113.0/24",),
        rate_limit={"requests": 5, "per": 60.0},
    )
    return key.with_changes(**changes)


async def test_org_round_trip_by_id_and_slug(store: Store) -> None:
    org = make_org()
    await store.create_org(org)
    assert await store.get_org(org.id) == org
    assert await store.get_org("acme") == org
    assert await store.get_org("nope") is None
    assert await store.get_org("org_nope") is None


async def test_duplicate_slug_is_a_conflict(store: Store) -> None:
    await store.create_org(make_org())
    with pytest.raises(Conflict):
        await store.create_org(make_org())
    assert len(await store.list_orgs()) == 1


async def test_orgs_are_listed_in_creation_order(store: Store) -> None:
    orgs = [make_org(f"org-{i}") for i in range(3)]
    for org in orgs:
        await store.create_org(org)
    assert await store.list_orgs() == orgs


async def test_update_org_is_saved_and_announced(store: Store) -> None:
    seen: list[Invalidation] = []
    store.subscribe(seen.append)
    org = make_org()
    await store.create_org(org)
    changed = Org(org.id, org.slug, "Acme Ltd", "standard", org.created_at)
    assert await store.update_org(org.id, lambda current: changed) == changed
    assert await store.update_org("org_missing", lambda current: changed) is None
    assert await store.get_org("acme") == changed
    await eventually(lambda: Invalidation("org", org.id) in seen)


async def test_key_round_trip(store: Store) -> None:
    org = make_org()
    await store.create_org(org)
    key = make_key(org)
    await store.create_key(key)
    assert await store.get_key(key.id) == key
    assert await store.find_key(key.key_hash) == key
    assert await store.find_key("unknown") is None
    assert await store.get_key("key_unknown") is None
    other = make_key(org, name="second")
    await store.create_key(other)
    assert await store.list_keys(org.id) == [key, other]
    assert await store.list_keys("org_other") == []


async def test_keys_are_listed_a_page_at_a_time_in_creation_order(store: Store) -> None:
    """The expiry scan reads an org's keys in pages: every key once, in the order they were made."""
    org = make_org()
    await store.create_org(org)
    now = time.time()
    # Made out of order on purpose: the listing follows created_at, not insertion.
    keys = [make_key(org, name=f"k{i}", created_at=now + i) for i in range(5)]
    for key in reversed(keys):
        await store.create_key(key)
    pages = [await store.list_keys(org.id, offset=start, limit=2) for start in (0, 2, 4, 6)]
    assert pages == [keys[0:2], keys[2:4], keys[4:5], []]
    assert await store.list_keys(org.id, offset=3) == keys[3:]


async def test_key_updates_are_saved_and_announced(store: Store) -> None:
    seen: list[Invalidation] = []
    store.subscribe(seen.append)
    org = make_org()
    await store.create_org(org)
    key = make_key(org)
    await store.create_key(key)
    revoked = key.with_changes(revoked_at=time.time())
    assert await store.update_key(key.id, lambda current: revoked) == revoked
    assert await store.update_key("key_missing", lambda current: revoked) is None
    assert await store.get_key(key.id) == revoked
    await eventually(lambda: seen.count(Invalidation("key", key.key_hash)) == 2)  # create, update


async def test_concurrent_updates_never_undo_each_other(store_factory: StoreFactory) -> None:
    """Two admins at once (say a revoke and a rotate) each see the other's write."""
    a, b = store_factory(), store_factory()
    await a.startup()
    await b.startup()
    try:
        org = make_org()
        await a.create_org(org)
        key = make_key(org, scopes=())
        await a.create_key(key)

        def add(scope: str) -> Callable[[ApiKey], ApiKey]:
            return lambda current: current.with_changes(scopes=(*current.scopes, scope))

        await asyncio.gather(
            *(s.update_key(key.id, add(f"s{i}")) for i, s in enumerate([a, b] * 10))
        )
        found = await a.get_key(key.id)
        assert found is not None
        assert sorted(found.scopes) == sorted(f"s{i}" for i in range(20))
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_a_change_that_raises_writes_nothing(store: Store) -> None:
    org = make_org()
    await store.create_org(org)
    key = make_key(org)
    await store.create_key(key)

    def refuse(current: ApiKey) -> ApiKey:
        raise Conflict("no")

    with pytest.raises(Conflict):
        await store.update_key(key.id, refuse)
    assert await store.get_key(key.id) == key


async def test_last_used_only_moves_forward(store: Store) -> None:
    org = make_org()
    await store.create_org(org)
    key = make_key(org)
    await store.create_key(key)
    await store.touch_keys({key.id: (org.id, 200.0)})
    await store.touch_keys({key.id: (org.id, 100.0), "key_missing": (org.id, 5.0)})
    found = await store.get_key(key.id)
    assert found is not None
    assert found.last_used_at == 200.0
    # A later update of other fields keeps the last-used time.
    await store.update_key(key.id, lambda current: current.with_changes(name="renamed"))
    found = await store.get_key(key.id)
    assert found is not None
    assert (found.name, found.last_used_at) == ("renamed", 200.0)


async def test_data_survives_a_restart(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.startup()
    org = make_org()
    await first.create_org(org)
    key = make_key(org)
    await first.create_key(key)
    await first.shutdown()
    second = store_factory()
    await second.startup()
    try:
        assert await second.get_org(org.id) == org
        assert await second.find_key(key.key_hash) == key
    finally:
        await second.shutdown()


async def test_other_redis_instances_hear_about_changes(redis_server: RedisServer) -> None:
    """The local store serves one instance by design; on Redis every instance hears."""
    prefix = unique_prefix()
    config = StoreConfig(backend="redis", url=redis_server.url, key_prefix=prefix)
    a, b = open_store(config), open_store(config)
    await a.startup()
    await b.startup()
    try:
        heard: list[Invalidation] = []
        b.subscribe(heard.append)
        org = make_org()
        await a.create_org(org)
        key = make_key(org)
        await a.create_key(key)
        await a.update_key(key.id, lambda current: current.with_changes(revoked_at=time.time()))
        await eventually(lambda: heard.count(Invalidation("key", key.key_hash)) == 2)
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_idempotency_lock_replay_and_mismatch(store: Store) -> None:
    now = time.time()
    scope = "org_a:hash1"
    assert (await store.idempotency_begin(scope, "fp", "t1", now, 60)).outcome == "acquired"
    assert (await store.idempotency_begin(scope, "fp", "t2", now, 60)).outcome == "in_flight"
    assert (await store.idempotency_begin(scope, "other", "t2", now, 60)).outcome == "mismatch"
    assert not await store.idempotency_finish(scope, "t2", b"not mine", now, 3600)
    assert await store.idempotency_finish(scope, "t1", b"\x00response\xff", now, 3600)
    replay = await store.idempotency_begin(scope, "fp", "t3", now + 1, 60)
    assert (replay.outcome, replay.response) == ("replay", b"\x00response\xff")
    assert (await store.idempotency_begin(scope, "other", "t3", now, 60)).outcome == "mismatch"
    # Another org's identical key is another record.
    assert (await store.idempotency_begin("org_b:hash1", "fp", "t4", now, 60)).outcome == "acquired"


async def test_idempotency_release_lets_a_retry_proceed(store: Store) -> None:
    now = time.time()
    assert (await store.idempotency_begin("o:h", "fp", "t1", now, 60)).outcome == "acquired"
    assert await store.idempotency_finish("o:h", "t1", None, now, 0)
    assert (await store.idempotency_begin("o:h", "fp", "t2", now, 60)).outcome == "acquired"


async def test_idempotency_lock_of_a_crashed_holder_runs_out(store: Store) -> None:
    now = time.time()
    assert (await store.idempotency_begin("o:h", "fp", "crashed", now, 1.0)).outcome == "acquired"
    assert (await store.idempotency_begin("o:h", "fp", "t2", now + 0.5, 1.0)).outcome == "in_flight"
    # Real time: on Redis the record's own expiry is the server's clock, not the one passed.
    await asyncio.sleep(1.1)
    later = now + 1.2
    assert (await store.idempotency_begin("o:h", "fp", "t2", later, 60)).outcome == "acquired"
    # The crashed holder, were it to come back, can no longer store anything.
    assert not await store.idempotency_finish("o:h", "crashed", b"late", later, 3600)


async def test_stored_responses_survive_a_restart(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.startup()
    now = time.time()
    await first.idempotency_begin("o:h", "fp", "t1", now, 60)
    await first.idempotency_finish("o:h", "t1", b"kept", now, 3600)
    await first.shutdown()
    second = store_factory()
    await second.startup()
    try:
        answer = await second.idempotency_begin("o:h", "fp", "t2", now + 1, 60)
        assert (answer.outcome, answer.response) == ("replay", b"kept")
    finally:
        await second.shutdown()


async def test_idempotency_lock_is_renewed_only_by_its_holder(store: Store) -> None:
    clock = FakeClock()
    assert (await store.idempotency_begin("o:h", "fp", "t1", clock(), 1.0)).outcome == "acquired"
    clock.now += 0.6
    assert await store.idempotency_renew("o:h", "t1", clock(), 1.0)
    assert not await store.idempotency_renew("o:h", "intruder", clock(), 1.0)
    clock.now += 0.6  # past the first deadline, within the renewed one
    assert (await store.idempotency_begin("o:h", "fp", "t2", clock(), 1.0)).outcome == "in_flight"
    assert await store.idempotency_finish("o:h", "t1", b"done", clock(), 60)
    assert not await store.idempotency_renew("o:h", "t1", clock(), 1.0)  # nothing to hold
