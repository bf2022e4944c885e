"""Behaviour that spans processes: two gateways on one Redis, and a Redis that goes away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    ADMIN_TOKEN,
    FakeClock,
    GatewayFactory,
    GatewayProc,
    RedisServer,
    Spawn,
    Upstream,
    UpstreamFactory,
    make_config,
    unique_prefix,
)
from tests.helpers import ADMIN, Admin, eventually
from tests.redis_cluster import RedisCluster

pytestmark = pytest.mark.slow


def _config(upstream: Upstream, store: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"token": ADMIN_TOKEN},
        "store": store,
        "upstreams": {"app": {"targets": [upstream.url]}},
        "routes": [{"path": "/v1/{rest:.*}", "upstream": "app"}],
    }


async def _admin(
    session: aiohttp.ClientSession, gp: GatewayProc, method: str, path: str, body: Any = None
) -> Any:
    return await Admin(gp, session).data(method, path, body)


async def _status(session: aiohttp.ClientSession, gp: GatewayProc, secret: str) -> int:
    async with session.get(f"{gp.url}/v1/x", headers={"Authorization": f"Bearer {secret}"}) as r:
        return r.status


async def test_revocation_reaches_every_instance_within_a_second(
    spawn_gateway: Spawn, upstream: Upstream, shared_stores: tuple[dict[str, Any], ...]
) -> None:
    a = spawn_gateway(_config(upstream, shared_stores[0]))
    b = spawn_gateway(_config(upstream, shared_stores[1]))
    async with aiohttp.ClientSession() as session:
        await _admin(
            session, a, "POST", "/admin/orgs", {"slug": "acme", "name": "Acme", "plan": "default"}
        )
        key = await _admin(session, a, "POST", "/admin/orgs/acme/keys", {"name": "k"})
        rotated = await _admin(session, a, "POST", "/admin/orgs/acme/keys", {"name": "r"})
        for gp in (a, b):  # warm in both caches
            assert await _status(session, gp, key["secret"]) == 200
            assert await _status(session, gp, rotated["secret"]) == 200
        await _admin(session, a, "POST", f"/admin/keys/{key['id']}/revoke")
        await _admin(session, a, "POST", f"/admin/keys/{rotated['id']}/rotate", {"grace": "0s"})
        revoked_at = time.monotonic()
        refused: dict[tuple[str, str], float] = {}

        async def all_refused() -> bool:
            for gp, name in ((a, "a"), (b, "b")):
                for secret, which in ((key["secret"], "revoked"), (rotated["secret"], "rotated")):
                    if (name, which) not in refused and await _status(session, gp, secret) == 401:
                        refused[(name, which)] = time.monotonic() - revoked_at
            return len(refused) == 4

        await eventually(all_refused, 3, interval=0.01)
    assert set(refused) == {("a", "revoked"), ("b", "revoked"), ("a", "rotated"), ("b", "rotated")}
    assert max(refused.values()) < 1.0, refused


async def test_redis_outage_is_503_never_a_disguised_401(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    private_redis: RedisServer,
) -> None:
    server = private_redis
    store = {"backend": "redis", "url": server.url, "key_prefix": unique_prefix()}
    clock = FakeClock()
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/v1/x", "upstream": "app", "auth": "key"}],
            store=store,
        ),
        clock=clock,
    )
    async with gw.session.post(
        f"{gw.admin_url}/admin/orgs",
        json={"slug": "acme", "name": "A", "plan": "default"},
        headers=ADMIN,
    ) as r:
        assert r.status == 201
    async with gw.session.post(
        f"{gw.admin_url}/admin/orgs/acme/keys", json={"name": "warm"}, headers=ADMIN
    ) as r:
        warm = (await r.json())["data"]["secret"]
    async with gw.session.post(
        f"{gw.admin_url}/admin/orgs/acme/keys", json={"name": "cold"}, headers=ADMIN
    ) as r:
        cold = (await r.json())["data"]["secret"]
    async with gw.session.get(f"{gw.url}/v1/x", headers={"Authorization": f"Bearer {warm}"}) as r:
        assert r.status == 200
    server.stop()
    # A key we cannot check is not an invalid key: 503 with Retry-After, not 401.
    async with gw.session.get(f"{gw.url}/v1/x", headers={"Authorization": f"Bearer {cold}"}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "unavailable"
    # Malformed keys are still refused offline.
    async with gw.session.get(f"{gw.url}/v1/x", headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with gw.session.get(f"{gw.admin_url}/readyz") as r:
        ready = (await r.json())["data"]
    assert ready["store"]["ok"] is False
    assert ready["store"]["invalidation"] == "down"
    # A key that was good when last checked keeps working through the outage, also once its
    # cache entry is past the short trust window of a lost invalidation channel.
    for _ in range(2):
        async with gw.session.get(
            f"{gw.url}/v1/x", headers={"Authorization": f"Bearer {warm}"}
        ) as r:
            assert r.status == 200
        clock.now += 1.1
    assert gw.process.keyring.stale_served >= 1


async def test_limits_are_exact_across_two_instances(
    spawn_gateway: Spawn, upstream: Upstream, shared_stores: tuple[dict[str, Any], ...]
) -> None:
    """40 concurrent requests over two gateways on a 10/min + burst 5 plan: exactly 15 pass;
    every answer has the headers; after Retry-After exactly one more passes."""
    plans = {"p": {"rate_limit": {"requests": 10, "per": "1m", "burst": 5}}}
    a, b = (spawn_gateway({**_config(upstream, store), "plans": plans}) for store in shared_stores)
    async with aiohttp.ClientSession() as session:
        await _admin(session, a, "POST", "/admin/orgs", {"slug": "acme", "name": "A", "plan": "p"})
        secret = (await _admin(session, a, "POST", "/admin/orgs/acme/keys", {"name": "k"}))[
            "secret"
        ]
        auth = {"Authorization": f"Bearer {secret}"}

        async def call(gp: GatewayProc) -> tuple[int, dict[str, str]]:
            async with session.get(f"{gp.url}/v1/x", headers=auth) as r:
                return r.status, dict(r.headers)

        answers = await asyncio.gather(*(call(a if i % 2 else b) for i in range(40)))
        statuses = [status for status, _ in answers]
        assert statuses.count(200) == 15
        assert statuses.count(429) == 25
        for status, headers in answers:
            assert headers["RateLimit-Policy"] == '"key";q=15;w=90'
            assert headers["RateLimit"].startswith('"key";r=')
            assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
                headers
            )
            if status == 429:
                # Whole seconds: one interval (6 s), plus up to a second when the request was
                # stamped before a concurrent one that Redis ran first (a safe overestimate).
                assert 1 <= int(headers["Retry-After"]) <= 7
        wait = max(int(h["Retry-After"]) for s, h in answers if s == 429)
        # Real time: a spawned gateway runs on the system clock.
        await asyncio.sleep(wait)
        assert (await call(b))[0] == 200
        assert (await call(a))[0] == 429


async def test_an_idempotent_write_replays_on_the_other_instance(
    spawn_gateway: Spawn,
    upstream_factory: UpstreamFactory,
    shared_stores: tuple[dict[str, Any], ...],
) -> None:
    """One POST with an Idempotency-Key reaches the backend once, whichever instances the
    client's tries land on: the same key sent to both at once, then again to each."""
    created = 0

    async def create(request: web.BaseRequest) -> web.Response:
        nonlocal created
        await request.read()
        await asyncio.sleep(0.2)  # the duplicate arrives while the first is in flight
        created += 1
        return web.json_response({"id": f"inv_{created}"}, status=201)

    backend = await upstream_factory(create)
    config = {
        "admin": {"token": ADMIN_TOKEN},
        "upstreams": {"app": {"targets": [backend.url]}},
        "routes": [{"path": "/v1/invoices", "upstream": "app", "idempotency": "optional"}],
    }
    a, b = (spawn_gateway({**config, "store": store}) for store in shared_stores)
    async with aiohttp.ClientSession() as session:
        await _admin(
            session, a, "POST", "/admin/orgs", {"slug": "acme", "name": "A", "plan": "default"}
        )
        secret = (await _admin(session, a, "POST", "/admin/orgs/acme/keys", {"name": "k"}))[
            "secret"
        ]
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "inv-42"}

        async def post(gp: GatewayProc) -> tuple[int, bytes, str | None]:
            async with session.post(f"{gp.url}/v1/invoices", json={"n": 1}, headers=headers) as r:
                return r.status, await r.read(), r.headers.get("Idempotent-Replayed")

        first, second = await asyncio.gather(post(a), post(b))
        assert sorted([first[0], second[0]]) == [201, 409]  # one runs, the other is told
        for gp in (b, a):
            status, body, replayed = await post(gp)
            assert (status, replayed) == (201, "true")
            assert body == (first if first[0] == 201 else second)[1]
    assert created == 1


@pytest.mark.parametrize("backend", ["local", "redis", "cluster"])
async def test_a_gateway_killed_mid_request_does_not_wedge_its_idempotency_key(
    spawn_gateway: Spawn,
    upstream_factory: UpstreamFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
) -> None:
    calls = []

    async def slow_create(request: web.BaseRequest) -> web.Response:
        calls.append(request.headers.get("Idempotency-Key"))
        await request.read()
        await asyncio.sleep(3)  # in flight while its gateway is killed
        return web.json_response({"id": "inv_1"}, status=201)

    up = await upstream_factory(slow_create)
    store: dict[str, Any] = {"backend": "local", "path": str(tmp_path / "killed.db")}
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = {"backend": "redis", "url": server.url, "key_prefix": unique_prefix()}
    elif backend == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        store = {"backend": "redis", "cluster": True, "url": cluster.url}
        store["key_prefix"] = unique_prefix()
    config = {
        "admin": {"token": ADMIN_TOKEN},
        "store": store,
        # Long enough that a second gateway starting on a loaded machine finds the lock held.
        "idempotency": {"lock_timeout": "5s"},
        "upstreams": {"app": {"targets": [up.url]}},
        "routes": [{"path": "/v1/invoices", "upstream": "app", "idempotency": "required"}],
    }
    first = spawn_gateway(config)
    async with aiohttp.ClientSession() as session:
        await _admin(
            session, first, "POST", "/admin/orgs", {"slug": "acme", "name": "A", "plan": "default"}
        )
        secret = (await _admin(session, first, "POST", "/admin/orgs/acme/keys", {"name": "k"}))[
            "secret"
        ]
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "order-42"}
        pending = asyncio.create_task(
            session.post(f"{first.url}/v1/invoices", data=b"{}", headers=headers)
        )
        await eventually(lambda: calls)
        killed_at = time.monotonic()
        first.proc.kill()  # SIGKILL: no cleanup, the lock stays behind
        with pytest.raises(aiohttp.ClientError):
            await pending
        second = spawn_gateway(config)
        async with session.post(f"{second.url}/v1/invoices", data=b"{}", headers=headers) as r:
            assert r.status == 409  # still locked: the first attempt may yet be acting
        # Real time: the spawned gateways run on the system clock, and on Redis the lock's
        # record expires by the server's.
        await asyncio.sleep(max(0.0, 5.2 - (time.monotonic() - killed_at)))
        async with session.post(f"{second.url}/v1/invoices", data=b"{}", headers=headers) as r:
            assert r.status == 201
        async with session.post(f"{second.url}/v1/invoices", data=b"{}", headers=headers) as r:
            assert r.status == 201
            assert r.headers["Idempotent-Replayed"] == "true"
    assert calls == ["order-42", "order-42"]
