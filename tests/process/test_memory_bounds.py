"""Key churn leaves nothing behind: every per-key map in the gateway is bounded or expires."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.keys.keyring import KeyRing
from gateway.keys.secrets import KeyFormat
from gateway.store import ApiKey, new_id
from gateway.webhooks import key_events
from gateway.webhooks.service import stable_event_id
from plugins.rate_limit import BUCKETS_IDLE, RateLimitPlugin
from tests.conftest import (
    FakeClock,
    GatewayFactory,
    RunningGateway,
    Upstream,
    closed_port_url,
    make_config,
)
from tests.helpers import ADMIN, Admin, eventually

BATCHES = 60
BATCH = 10  # keys created, used, revoked and tried again together, per batch
STEP = 20.0  # seconds of the injected clock per batch: 1,200 s in all, twice the longest expiry
LAST_USED_INTERVAL = 60.0
SOME = {"requests": 100_000, "per": "1m"}  # limits that count every request, never refuse


def churn_config(upstream: Upstream, store: dict[str, Any]) -> dict[str, Any]:
    return make_config(
        {"app": {"targets": [upstream.url]}},
        [
            {
                "path": "/v1/items",
                "upstream": "app",
                "auth": "key",
                "methods": ["GET"],
                "rate_limits": [{"name": "items", "scope": "key", **SOME}],
            },
            {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"},
        ],
        store=store,
        plans={"churn": {"rate_limit": SOME, "org_rate_limit": SOME}},
        keys={"last_used_interval": f"{LAST_USED_INTERVAL:g}s"},
    )


class Churn:
    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.api = Admin(gw)

    async def admin(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        status, answer = await self.api.call("POST", path, body)
        assert status == expect, answer
        return answer["data"]  # type: ignore[no-any-return]

    async def status(self, path: str, secret: str) -> int:
        headers = {"Authorization": f"Bearer {secret}"}
        async with self.gw.session.get(f"{self.gw.url}{path}", headers=headers) as answer:
            await answer.read()
            return answer.status

    async def until(self, path: str, secret: str, expected: int) -> None:
        # Revocation reaches the cache by the store's channel: at once locally, over pub/sub
        # on Redis, where the contract allows up to a second.
        await eventually(lambda: self.status(path, secret), 1.0, expect=expected, interval=0.01)

    async def key(self, org: str) -> dict[str, Any]:
        return await self.admin(f"/admin/orgs/{org}/keys", {"name": "churn"}, 201)

    async def use_and_revoke(self, org: str) -> None:
        key = await self.key(org)
        assert await self.status("/v1/items", key["secret"]) == 200
        await self.admin(f"/admin/keys/{key['id']}/revoke", {}, 200)
        await self.until("/v1/items", key["secret"], 401)


async def test_key_churn_keeps_the_key_caches_and_bucket_caches_bounded(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """600 keys made, used, revoked and tried again, one every two seconds on the injected
    clock, plus per batch a key used once then left idle and a forged key: afterwards the key
    ring and the rate-limit plugins hold only what the last minutes used, not every key seen."""
    clock = FakeClock()
    gw = await gateway_factory(churn_config(upstream, store_config), clock=clock)
    churn = Churn(gw)
    for batch in range(BATCHES):
        org = f"churn-{batch}"
        await churn.admin("/admin/orgs", {"slug": org, "name": "Churn", "plan": "churn"}, 201)
        idle = await churn.key(org)  # used once, never revoked, never used again
        assert await churn.status("/v1/other", idle["secret"]) == 200
        # Well formed, so looked up once, then remembered as unknown for a while.
        assert await churn.status("/v1/items", KeyFormat("fw").generate()) == 401
        await asyncio.gather(*(churn.use_and_revoke(org) for _ in range(BATCH)))
        clock.now += STEP

    sizes = gw.process.keyring.sizes()
    # Idle keys used within the last IDLE_TTL, and nothing revoked.
    idle_batches = int(KeyRing.IDLE_TTL // STEP) + 1
    assert sizes["known"] <= idle_batches, sizes
    assert sizes["orgs"] <= sizes["known"], sizes
    # Revoked and forged keys of the last NEGATIVE_TTL only: the last batch's.
    assert sizes["unknown"] <= BATCH + 1, sizes
    # Keys whose last use was marked within one interval.
    assert sizes["last_written"] <= (LAST_USED_INTERVAL // STEP + 1) * (BATCH + 1), sizes
    assert sizes["inflight"] == 0, sizes

    snapshot = gw.process.snapshot
    assert snapshot is not None
    plugins = [p for p in snapshot.plugins if isinstance(p, RateLimitPlugin)]
    assert plugins
    # Keys used within the last two BUCKETS_IDLE, at most.
    recent = (2 * BUCKETS_IDLE // STEP + 1) * (BATCH + 1)
    assert all(p.cached_keys <= recent for p in plugins), [p.cached_keys for p in plugins]


async def test_the_expiring_key_scan_holds_one_page_of_an_orgs_keys_at_a_time(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked keys stay in the store for good, so under churn an org's key list only grows;
    the periodic key.expiring scan reads it a page at a time and still finds every key due."""
    monkeypatch.setattr(key_events, "SCAN_PAGE", 10)
    gw = await gateway_factory(
        make_config(
            {},
            [],
            store=store_config,
            plans={"churn": {}},
            webhooks={"allow_private_targets": True, "key_expiring_notice": "1h"},
        )
    )
    churn = Churn(gw)
    org = await churn.admin("/admin/orgs", {"slug": "many", "name": "Many", "plan": "churn"}, 201)
    body = {"url": closed_port_url(), "events": ["key.expiring"]}
    endpoint = await churn.admin("/admin/orgs/many/webhooks", body, 201)
    store, now = gw.process.store, time.time()
    due = []
    for n in range(35):  # four pages; keys due to expire on the first page and the last
        secret = KeyFormat("fw").generate()
        expiring = n in (3, 33, 34)
        key = ApiKey(
            id=new_id("key"),
            org_id=org["id"],
            name=f"k{n}",
            scopes=("read",),
            environment="live",
            prefix="fw_live_",
            last4=secret[-4:],
            key_hash=KeyFormat("fw").hash(secret),
            created_at=now + n * 0.001,  # the scan's order, oldest first
            expires_at=now + 1800 if expiring else None,
            revoked_at=None if expiring else now,
        )
        await store.create_key(key)
        if expiring:
            due.append(stable_event_id("key.expiring", key.id, repr(key.expires_at)))

    held: list[int] = []
    real_list_keys = store.list_keys
    # The dispatcher's own periodic scan may be running too: count this test's scan only.
    scanner = asyncio.current_task()

    async def watched(org_id: str, **page: Any) -> list[ApiKey]:
        keys = await real_list_keys(org_id, **page)
        if asyncio.current_task() is scanner:
            held.append(len(keys))
        return keys

    monkeypatch.setattr(store, "list_keys", watched)
    await gw.process.key_events.scan_expiring()
    assert max(held) <= 10, held
    assert sum(held) == 35, held  # every key read once
    async with gw.session.get(
        f"{gw.admin_url}/admin/webhooks/{endpoint['id']}/deliveries", headers=ADMIN
    ) as answer:
        queued = {d["eventId"] for d in (await answer.json())["data"]}
    assert queued == set(due)
