"""The key ring's cache against a real store: races, cancellation, floods and outages."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.keys.keyring import KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.keys.secrets import KeyFormat
from gateway.store import ApiKey, Org, StoreError, new_id
from gateway.store.local import LocalStore
from tests.conftest import FakeClock
from tests.helpers import eventually


class GatedStore(LocalStore):
    """A real SQLite store whose key lookups can be held after reading, and are counted."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate: asyncio.Event | None = None
        self.lookups = 0
        self.held = 0  # lookups that have read the key and wait at the gate
        self.fail = False  # the lookup fails (as in an outage) once past the gate

    async def find_key(self, key_hash: str) -> ApiKey | None:
        self.lookups += 1
        key = await super().find_key(key_hash)
        if self.gate is not None:
            self.held += 1
            await self.gate.wait()
        if self.fail:
            raise StoreError("the store went away")
        return key


FORMAT = KeyFormat("fw")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatedStore]:
    s = GatedStore(str(tmp_path / "ring.db"))
    await s.startup()
    yield s
    await s.shutdown()


async def make_key(store: GatedStore) -> tuple[ApiKey, str]:
    org = Org(new_id("org"), "acme-" + new_id("x")[2:8].lower(), "Acme", "free", time.time())
    await store.create_org(org)
    secret = FORMAT.generate()
    parsed = FORMAT.parse(secret)
    assert parsed is not None
    key = ApiKey(
        id=new_id("key"),
        org_id=org.id,
        name="k",
        scopes=("read",),
        environment="live",
        prefix=parsed.display_prefix,
        last4=parsed.last4,
        key_hash=FORMAT.hash(secret),
        created_at=time.time(),
    )
    await store.create_key(key)
    return key, secret


def ring(store: GatedStore, clock: FakeClock | None = None) -> KeyRing:
    return KeyRing(
        store,
        FORMAT,
        ScopePolicy({}),
        cache_ttl=30,
        last_used_interval=60,
        clock=clock or time.time,
    )


async def test_a_lookup_overlapping_a_revocation_is_not_cached(store: GatedStore) -> None:
    key, secret = await make_key(store)
    keyring = ring(store)
    store.gate = asyncio.Event()
    first = asyncio.create_task(keyring.resolve(secret))
    await eventually(lambda: store.held)  # the lookup has read the key, not yet returned it
    await store.update_key(key.id, lambda k: k.with_changes(revoked_at=time.time()))
    store.gate.set()
    assert await first is not None  # it began before the revocation
    assert await keyring.resolve(secret) is None  # but nothing stale was kept


async def test_a_cancelled_caller_does_not_cancel_others_sharing_its_lookup(
    store: GatedStore,
) -> None:
    _, secret = await make_key(store)
    keyring = ring(store)
    store.gate = asyncio.Event()
    leader = asyncio.create_task(keyring.resolve(secret))
    follower = asyncio.create_task(keyring.resolve(secret))
    await eventually(lambda: store.held)  # both wait on the one lookup
    leader.cancel()
    store.gate.set()
    identity = await follower
    assert identity is not None
    assert store.lookups == 1
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_failed_lookup_whose_caller_left_is_not_an_unhandled_error(
    store: GatedStore, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = await make_key(store)
    keyring = ring(store)
    store.gate = asyncio.Event()
    store.fail = True
    caller = asyncio.create_task(keyring.resolve(secret))
    await eventually(lambda: store.held)
    caller.cancel()  # its client went away during the outage
    store.gate.set()
    await eventually(lambda: keyring.sizes()["inflight"], expect=0)
    del caller
    await asyncio.sleep(0)
    gc.collect()  # asyncio reports an exception never retrieved when the task is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_forged_keys_cannot_push_good_keys_out_of_the_cache(store: GatedStore) -> None:
    _, secret = await make_key(store)
    keyring = ring(store)
    keyring.MAX_UNKNOWN = 5
    assert await keyring.resolve(secret) is not None
    for _ in range(50):
        assert await keyring.resolve(FORMAT.generate()) is None
    before = store.lookups
    assert await keyring.resolve(secret) is not None
    assert store.lookups == before  # still warm


async def test_unknown_keys_are_remembered_briefly(store: GatedStore) -> None:
    clock = FakeClock()
    keyring = ring(store, clock)
    forged = FORMAT.generate()
    assert await keyring.resolve(forged) is None
    assert await keyring.resolve(forged) is None
    assert store.lookups == 1
    clock.now += KeyRing.NEGATIVE_TTL + 1
    assert await keyring.resolve(forged) is None
    assert store.lookups == 2


async def test_during_an_outage_good_keys_are_served_stale_without_asking_each_time(
    tmp_path: Path,
) -> None:
    store = GatedStore(str(tmp_path / "out.db"))
    await store.startup()
    _, secret = await make_key(store)
    clock = FakeClock()
    keyring = ring(store, clock)
    assert await keyring.resolve(secret) is not None
    await store.shutdown()  # from now on every store call fails
    clock.now += 31  # past the cache TTL
    tries = store.lookups
    for _ in range(20):
        assert await keyring.resolve(secret) is not None
    assert store.lookups == tries + 1  # one try, then a second of not asking
    assert keyring.stale_served == 20
    clock.now += KeyRing.OUTAGE_BACKOFF + 0.1
    assert await keyring.resolve(secret) is not None
    assert store.lookups == tries + 2
