"""The webhook queue's contract, on SQLite and on Redis: atomic enqueue, exclusive leased
claims, holder-only finish, retries, history and expiry."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.store import Conflict, Store, new_id
from gateway.store.webhook_base import Outcome
from gateway.store.webhook_models import Attempt, Delivery, Endpoint, Event, Secret
from tests.conftest import StoreFactory


def make_endpoint(org_id: str = "org_1", **changes: object) -> Endpoint:
    endpoint = Endpoint(
        id=new_id("wh"),
        org_id=org_id,
        url="https://hooks.example.com/in",
        events=("invoice.created",),
        secrets=(Secret("whsec_AAAA"),),
        created_at=time.time(),
    )
    return endpoint.with_changes(**changes) if changes else endpoint


def make_event(endpoints: list[Endpoint], now: float) -> tuple[Event, list[Delivery]]:
    event_id = new_id("evt")
    payload = b'{"id":"%s","type":"invoice.created","data":{}}' % event_id.encode()
    event = Event(event_id, "org_1", "invoice.created", now, payload)
    deliveries = [
        Delivery(
            new_id("dlv"), e.id, "org_1", event_id, "invoice.created", payload, now, next_at=now
        )
        for e in endpoints
    ]
    return event, deliveries


def attempt(number: int, status: int | None = 500) -> Attempt:
    ok = status is not None and 200 <= status < 300
    return Attempt(number, time.time(), 0.01, status, ok, None if ok else "failed", "body")


async def test_endpoints_are_capped_listed_changed_and_deleted(store: Store) -> None:
    hooks = store.webhooks
    first, second = make_endpoint(), make_endpoint()
    assert await hooks.create_endpoint(first, cap=2)
    assert await hooks.create_endpoint(second, cap=2)
    assert not await hooks.create_endpoint(make_endpoint(), cap=2)
    assert await hooks.create_endpoint(make_endpoint(org_id="org_2"), cap=1)
    assert [e.id for e in await hooks.list_endpoints("org_1")] == [first.id, second.id]
    changed = await hooks.update_endpoint(first.id, lambda e: e.with_changes(status="disabled"))
    assert changed is not None
    assert changed.status == "disabled"
    got = await hooks.get_endpoint(first.id)
    assert got == changed
    assert got.secrets == (Secret("whsec_AAAA"),)
    assert await hooks.delete_endpoint(first.id)
    assert not await hooks.delete_endpoint(first.id)
    assert await hooks.get_endpoint(first.id) is None
    assert await hooks.update_endpoint(first.id, lambda e: e) is None
    assert [e.id for e in await hooks.list_endpoints("org_1")] == [second.id]
    assert await hooks.create_endpoint(make_endpoint(), cap=2)  # room again


async def test_concurrent_creates_never_pass_the_cap(store: Store) -> None:
    results = await asyncio.gather(
        *(store.webhooks.create_endpoint(make_endpoint(), cap=3) for _ in range(12))
    )
    assert sum(results) == 3
    assert len(await store.webhooks.list_endpoints("org_1")) == 3


async def test_an_event_is_queued_once(store: Store) -> None:
    now = time.time()
    event, deliveries = make_event([make_endpoint(), make_endpoint()], now)
    assert await store.webhooks.enqueue(event, deliveries, keep=3600)
    assert not await store.webhooks.enqueue(event, deliveries, keep=3600)
    assert await store.webhooks.get_event(event.id) == event
    assert await store.webhooks.queue_depth(now) == (2, 2)
    claimed = await store.webhooks.claim(now, now + 30, 10, "t1", per_endpoint=100, busy={})
    assert sorted(d.id for d in claimed) == sorted(d.id for d in deliveries)
    assert all(d.payload == event.payload and d.token == "t1" for d in claimed)


async def test_each_delivery_is_claimed_by_one_instance(store_factory: StoreFactory) -> None:
    stores = [store_factory() for _ in range(2)]
    for s in stores:
        await s.startup()
    try:
        now = time.time()
        event, deliveries = make_event([make_endpoint() for _ in range(30)], now)
        await stores[0].webhooks.enqueue(event, deliveries, keep=3600)
        claims = await asyncio.gather(
            *(
                stores[i % 2].webhooks.claim(
                    now, now + 30, 7, f"token-{i}", per_endpoint=100, busy={}
                )
                for i in range(8)
            )
        )
        ids = [d.id for batch in claims for d in batch]
        assert len(ids) == len(set(ids)) == 30
    finally:
        for s in stores:
            await s.shutdown()


async def test_a_lease_that_runs_out_frees_the_delivery(store: Store) -> None:
    hooks = store.webhooks
    now = time.time()
    event, deliveries = make_event([make_endpoint()], now)
    await hooks.enqueue(event, deliveries, keep=3600)
    (first,) = await hooks.claim(now, now + 10, 5, "dead-holder", per_endpoint=100, busy={})
    assert (
        await hooks.claim(now + 5, now + 15, 5, "other", per_endpoint=100, busy={}) == []
    )  # still leased
    listed = await hooks.get_delivery(first.id)
    assert listed is not None
    assert listed.in_flight(now + 5)
    (again,) = await hooks.claim(now + 11, now + 21, 5, "new-holder", per_endpoint=100, busy={})
    assert again.id == first.id
    assert again.attempts == 0
    # The first holder comes back late: its result does not count.
    late = Outcome(attempt(1, 200), "succeeded")
    assert not await hooks.finish(first, "dead-holder", late, now + 12, keep=3600)
    assert not await hooks.release(first, "dead-holder", now)
    assert await hooks.finish(first, "new-holder", late, now + 12, keep=3600)
    done = await hooks.get_delivery(first.id)
    assert done is not None
    assert done.status == "succeeded"
    assert done.attempts == 1
    assert [a.status for a in done.history] == [200]
    assert await hooks.claim(now + 100, now + 110, 5, "x", per_endpoint=100, busy={}) == []


async def test_failed_attempts_wait_then_die_with_their_history(store: Store) -> None:
    hooks = store.webhooks
    now = time.time()
    event, (delivery,) = make_event([make_endpoint()], now)
    await hooks.enqueue(event, [delivery], keep=3600)
    (claimed,) = await hooks.claim(now, now + 30, 1, "a", per_endpoint=100, busy={})
    retry_at = now + 60
    assert await hooks.finish(claimed, "a", Outcome(attempt(1), "pending", retry_at), now, 3600)
    assert await hooks.claim(now + 59, now + 90, 1, "b", per_endpoint=100, busy={}) == []
    assert await hooks.queue_depth(now + 59) == (1, 0)
    (second,) = await hooks.claim(retry_at, retry_at + 30, 1, "b", per_endpoint=100, busy={})
    assert second.attempts == 1
    assert await hooks.finish(second, "b", Outcome(attempt(2, None), "dead"), retry_at, 3600)
    assert (
        await hooks.claim(retry_at + 10**6, retry_at + 10**6, 1, "c", per_endpoint=100, busy={})
        == []
    )
    assert await hooks.queue_depth(retry_at) == (0, 0)
    dead = await hooks.get_delivery(delivery.id)
    assert dead is not None
    assert dead.status == "dead"
    assert dead.attempts == 2
    assert [(a.number, a.status) for a in dead.history] == [(1, 500), (2, None)]


async def test_manual_retry_requeues_once_and_waits_for_an_attempt_in_flight(
    store: Store,
) -> None:
    hooks = store.webhooks
    now = time.time()
    event, (delivery,) = make_event([make_endpoint()], now)
    await hooks.enqueue(event, [delivery], keep=3600)
    (claimed,) = await hooks.claim(now, now + 30, 1, "a", per_endpoint=100, busy={})
    with pytest.raises(Conflict):
        await hooks.retry(delivery.id, now + 1)
    await hooks.finish(claimed, "a", Outcome(attempt(1), "dead"), now + 1, 3600)
    retried = await hooks.retry(delivery.id, now + 2)
    assert retried is not None
    assert retried.status == "pending"
    assert retried.manual
    (again,) = await hooks.claim(now + 2, now + 32, 1, "b", per_endpoint=100, busy={})
    assert again.manual
    assert again.attempts == 1
    assert await hooks.retry("dlv_unknown", now) is None


async def test_a_released_delivery_is_due_again_unattempted(store: Store) -> None:
    hooks = store.webhooks
    now = time.time()
    event, (delivery,) = make_event([make_endpoint()], now)
    await hooks.enqueue(event, [delivery], keep=3600)
    await hooks.claim(now, now + 30, 1, "a", per_endpoint=100, busy={})
    assert await hooks.release(delivery, "a", now + 1)
    (again,) = await hooks.claim(now + 1, now + 31, 1, "b", per_endpoint=100, busy={})
    assert again.attempts == 0
    assert again.token == "b"


async def test_history_lists_the_newest_first_and_finished_ones_expire(store: Store) -> None:
    hooks = store.webhooks
    endpoint = make_endpoint()
    now = time.time()
    ids = []
    for i in range(3):
        event, deliveries = make_event([endpoint], now + i)
        await hooks.enqueue(event, deliveries, keep=3600)
        ids.append(deliveries[0].id)
    listed = await hooks.list_deliveries(endpoint.id, 2)
    assert [d.id for d in listed] == [ids[2], ids[1]]
    for claimed in await hooks.claim(now + 5, now + 35, 5, "a", per_endpoint=100, busy={}):
        await hooks.finish(claimed, "a", Outcome(attempt(1, 204), "succeeded"), now, 0.2)
    # Real time: on Redis a finished delivery expires by the server's clock, not the one passed.
    await asyncio.sleep(0.4)
    await hooks.purge(time.time())
    assert await hooks.get_delivery(ids[0]) is None
    assert await hooks.list_deliveries(endpoint.id, 10) == []


async def test_claims_go_endpoint_by_endpoint_within_each_ones_cap(store: Store) -> None:
    hooks = store.webhooks
    now = time.time()
    slow, fast = make_endpoint(), make_endpoint()
    for i in range(50):  # an old backlog at one endpoint
        event, deliveries = make_event([slow], now - 100 + i)
        await hooks.enqueue(event, deliveries, keep=3600)
    event, (fresh,) = make_event([fast], now)
    await hooks.enqueue(event, [fresh], keep=3600)
    # This caller already has two attempts in flight to the slow endpoint: its cap is reached.
    claimed = await hooks.claim(now, now + 30, 4, "a", per_endpoint=2, busy={slow.id: 2})
    assert [d.id for d in claimed] == [fresh.id]
    # Another caller gets two from the backlog (the oldest) and nothing more from it.
    claimed = await hooks.claim(now, now + 30, 10, "b", per_endpoint=2, busy={})
    assert len(claimed) == 2
    assert {d.endpoint_id for d in claimed} == {slow.id}
    assert await hooks.queue_depth(now) == (51, 48)


async def test_a_second_manual_retry_keeps_it_one_attempt(store: Store) -> None:
    hooks = store.webhooks
    now = time.time()
    event, (delivery,) = make_event([make_endpoint()], now)
    await hooks.enqueue(event, [delivery], keep=3600)
    (claimed,) = await hooks.claim(now, now + 30, 1, "a", per_endpoint=10, busy={})
    await hooks.finish(claimed, "a", Outcome(attempt(1), "dead"), now, 3600)
    await hooks.retry(delivery.id, now + 1)
    again = await hooks.retry(delivery.id, now + 2)
    assert again is not None
    assert again.manual


async def test_many_backlogged_endpoints_never_starve_a_fresh_one(store: Store) -> None:
    hooks = store.webhooks
    now = time.time()
    backlogged = [make_endpoint() for _ in range(8)]
    for i in range(20):
        for endpoint in backlogged:
            event, deliveries = make_event([endpoint], now - 1000 + i)
            await hooks.enqueue(event, deliveries, keep=3600)
    busy = {e.id: 3 for e in backlogged}  # every slot but one is in flight to them
    fresh_endpoint = make_endpoint()
    event, (fresh,) = make_event([fresh_endpoint], now)
    await hooks.enqueue(event, [fresh], keep=3600)
    (claimed,) = await hooks.claim(now, now + 30, 1, "a", per_endpoint=4, busy=busy)
    assert claimed.id == fresh.id
