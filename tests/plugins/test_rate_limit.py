"""Rate limits and quotas through real HTTP, on both stores, with an injected clock."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDictProxy

from gateway.config import RateLimitConfig
from gateway.ratelimit.backends import BATCH_TIMEOUT, LocalLimits, RedisLimits
from gateway.ratelimit.plan_limits import bucket
from gateway.ratelimit.policy import US, Limit
from tests.conftest import (
    FakeClock,
    GatewayFactory,
    LogLines,
    RedisServer,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    make_config,
    raw_redis,
    unique_prefix,
)
from tests.helpers import Admin


def limited_config(
    upstream: Upstream, store: dict[str, Any], plan: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    routes = extra.pop("routes", None) or [
        {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"}
    ]
    return make_config(
        {"app": {"targets": [upstream.url]}}, routes, store=store, plans={"p": plan}, **extra
    )


class Client:
    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.admin = Admin(gw).data

    async def key(self, org: str = "acme", **fields: Any) -> dict[str, Any]:
        if not any(o["slug"] == org for o in await self.admin("GET", "/admin/orgs")):
            await self.admin("POST", "/admin/orgs", {"slug": org, "name": org, "plan": "p"})
        return await self.admin("POST", f"/admin/orgs/{org}/keys", {"name": "k", **fields})  # type: ignore[no-any-return]

    async def get(self, secret: str, path: str = "/v1/x") -> tuple[int, CIMultiDictProxy[str], Any]:
        async with self.gw.session.get(
            f"{self.gw.url}{path}", headers={"Authorization": f"Bearer {secret}"}
        ) as r:
            body = await r.json() if r.content_type == "application/json" else None
            return r.status, r.headers, body


async def test_burst_then_one_per_interval_and_refusals_are_not_counted(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock()
    gw = await gateway_factory(
        limited_config(
            upstream, store_config, {"rate_limit": {"requests": 10, "per": "1m", "burst": 5}}
        ),
        clock=clock,
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    remaining = []
    for _ in range(15):
        status, headers, _ = await client.get(secret)
        assert status == 200
        assert headers["RateLimit-Policy"] == '"key";q=15;w=90'
        remaining.append(int(headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(14, -1, -1))
    assert headers["RateLimit"] == '"key";r=0;t=90'
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Reset"]) == ("15", "90")
    for _ in range(5):  # refused: none of these is counted
        status, headers, body = await client.get(secret)
        assert status == 429
        assert headers["Retry-After"] == "6"
        assert headers["RateLimit"] == '"key";r=0;t=90'
        assert body["error"]["code"] == "rate_limited"
        assert "'key'" in body["error"]["message"]
    assert len(upstream.seen) == 15
    clock.now += 6.0
    assert (await client.get(secret))[0] == 200  # exactly one more after Retry-After
    assert (await client.get(secret))[0] == 429
    clock.now += 60.0  # ten more intervals refill ten requests
    assert [(await client.get(secret))[0] for _ in range(11)] == [200] * 10 + [429]


async def test_org_limit_is_shared_by_all_keys_of_the_org(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(
        limited_config(upstream, store_config, {"org_rate_limit": {"requests": 5, "per": "1m"}}),
        clock=FakeClock(),
    )
    client = Client(gw)
    a, b = (await client.key())["secret"], (await client.key())["secret"]
    other = (await client.key(org="other"))["secret"]
    statuses = [(await client.get(secret))[0] for secret in (a, b, a, b, a, b)]
    assert statuses == [200] * 5 + [429]
    status, headers, body = await client.get(b)
    assert (status, headers["RateLimit-Policy"]) == (429, '"org";q=5;w=60')
    assert "'org'" in body["error"]["message"]
    assert (await client.get(other))[0] == 200  # another org has its own


async def test_all_limits_are_decided_together(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A request refused by one limit is counted by none: the key's limit is untouched."""
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {
                "rate_limit": {"requests": 3, "per": "1m"},
                "org_rate_limit": {"requests": 100, "per": "1m"},
            },
            routes=[
                {
                    "path": "/v1/export",
                    "upstream": "app",
                    "auth": "key",
                    "cost": 1,
                    "rate_limits": [{"name": "export", "requests": 1, "per": "1h"}],
                },
                {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"},
            ],
        ),
        clock=FakeClock(),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    status, headers, _ = await client.get(secret, "/v1/export")
    assert status == 200
    assert (
        headers["RateLimit-Policy"] == '"key";q=3;w=60, "org";q=100;w=60, "route:export";q=1;w=3600'
    )
    for _ in range(3):
        status, headers, body = await client.get(secret, "/v1/export")
        assert status == 429
        assert "'route:export'" in body["error"]["message"]
        assert headers["Retry-After"] == "3600"
    # The key's limit only saw the one export that went through.
    assert [(await client.get(secret))[0] for _ in range(3)] == [200, 200, 429]


async def test_route_cost_takes_several_units(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {"rate_limit": {"requests": 5, "per": "1m"}},
            routes=[
                {"path": "/v1/search", "upstream": "app", "auth": "key", "cost": 2},
                {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"},
            ],
        ),
        clock=FakeClock(),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert [(await client.get(secret, "/v1/search"))[0] for _ in range(3)] == [200, 200, 429]
    assert (await client.get(secret))[0] == 200  # one unit was left


def remaining(headers: CIMultiDictProxy[str]) -> dict[str, int]:
    """RateLimit as policy -> r."""
    fields = (item.split(";") for item in headers["RateLimit"].split(", "))
    return {name.strip('"'): int(r.removeprefix("r=")) for name, r, _t in fields}


async def test_a_refusal_by_one_limit_reports_what_the_others_really_have_left(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A refused request is counted by no limit, so none reports it as counted: the 429 shows
    what the answer before it showed, and so does the next allowed request, less its own cost."""
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {"rate_limit": {"requests": 15, "per": "1m"}, "quota": {"requests": 100, "per": "day"}},
            routes=[
                {
                    "path": "/v1/export",
                    "upstream": "app",
                    "auth": "key",
                    "rate_limits": [{"name": "export", "requests": 1, "per": "1h"}],
                },
                {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"},
            ],
        ),
        clock=FakeClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    for _ in range(2):
        assert (await client.get(secret))[0] == 200
    status, before, _ = await client.get(secret, "/v1/export")
    assert status == 200
    assert remaining(before) == {"key": 12, "quota": 97, "route:export": 0}
    status, refused, _ = await client.get(secret, "/v1/export")
    assert status == 429
    assert refused["RateLimit"] == before["RateLimit"]  # nothing changed, time stood still
    assert (refused["X-RateLimit-Limit"], refused["X-RateLimit-Remaining"]) == ("1", "0")
    status, after, _ = await client.get(secret)
    assert status == 200
    assert remaining(after) == {"key": 11, "quota": 96}


async def test_a_refused_costly_request_reports_the_units_that_remain(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A request costing more than is left is refused with r > 0: every limit reports what it
    still has, X-RateLimit-Remaining included, and a cheaper request may still use it."""
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {"rate_limit": {"requests": 5, "per": "1m"}, "quota": {"requests": 100, "per": "day"}},
            routes=[
                {"path": "/v1/search", "upstream": "app", "auth": "key", "cost": 3},
                {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"},
            ],
        ),
        clock=FakeClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    status, before, _ = await client.get(secret, "/v1/search")
    assert (status, remaining(before)) == (200, {"key": 2, "quota": 97})
    status, refused, body = await client.get(secret, "/v1/search")
    assert status == 429
    assert "'key'" in body["error"]["message"]
    assert refused["RateLimit"] == before["RateLimit"]
    assert (refused["X-RateLimit-Limit"], refused["X-RateLimit-Remaining"]) == ("5", "2")
    assert refused["Retry-After"] == "12"  # one more unit refills in 12 s
    statuses = [(await client.get(secret))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # the two units the refusal reported were there


async def test_quota_rolls_over_at_the_utc_month_boundary(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock(datetime(2026, 1, 31, 23, 59, 50, tzinfo=UTC).timestamp())
    gw = await gateway_factory(
        limited_config(upstream, store_config, {"quota": {"requests": 3, "per": "month"}}),
        clock=clock,
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert [(await client.get(secret))[0] for _ in range(3)] == [200] * 3
    status, headers, body = await client.get(secret)
    assert status == 429
    assert headers["Retry-After"] == "10"
    assert headers["RateLimit-Policy"] == f'"quota";q=3;w={31 * 86400}'
    assert "'quota'" in body["error"]["message"]
    clock.now = datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    status, headers, _ = await client.get(secret)
    assert status == 200
    assert headers["RateLimit-Policy"] == f'"quota";q=3;w={28 * 86400}'
    assert headers["RateLimit"] == f'"quota";r=2;t={28 * 86400 - 1}'


async def test_per_key_override_through_the_admin_api(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(
        limited_config(upstream, store_config, {"rate_limit": {"requests": 100, "per": "1m"}}),
        clock=FakeClock(),
    )
    client = Client(gw)
    key = await client.key(rateLimit={"requests": 2, "per": "1m"})
    assert key["rateLimit"] == {"requests": 2, "per": 60.0, "burst": 0}
    assert [(await client.get(key["secret"]))[0] for _ in range(3)] == [200, 200, 429]
    other = await client.key()
    updated = await client.admin(
        "PATCH", f"/admin/keys/{other['id']}", {"rateLimit": {"requests": 1, "per": "1h"}}
    )
    assert updated["rateLimit"] == {"requests": 1, "per": 3600.0, "burst": 0}
    statuses = [(await client.get(other["secret"]))[0] for _ in range(2)]
    assert statuses == [200, 429]
    cleared = await client.admin("PATCH", f"/admin/keys/{other['id']}", {"rateLimit": None})
    assert cleared["rateLimit"] is None
    assert (await client.get(other["secret"]))[0] == 200  # back on the plan's 100/min


async def test_identity_endpoint_reports_limits_and_what_remains(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {
                "rate_limit": {"requests": 10, "per": "1m", "burst": 5},
                "quota": {"requests": 1000, "per": "day"},
            },
        ),
        clock=FakeClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    await client.get(secret)
    status, _, body = await client.get(secret, "/v1/me")
    assert status == 200
    assert body["data"]["rateLimit"] == {
        "policies": [
            {"name": "key", "limit": 15, "window": 90, "remaining": 13, "reset": 12},
            {"name": "quota", "limit": 1000, "window": 86400, "remaining": 998, "reset": 43200},
        ]
    }


async def test_decisions_are_counted_and_logged(
    gateway_factory: GatewayFactory, upstream: Upstream, logs: LogLines
) -> None:
    gw = await gateway_factory(
        limited_config(upstream, {}, {"rate_limit": {"requests": 1, "per": "1m"}}),
        clock=FakeClock(),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    await client.get(secret)
    await client.get(secret)
    text = await gw.metrics()
    assert 'gateway_rate_limit_decisions_total{decision="allowed",policy="key"} 1.0' in text
    assert 'gateway_rate_limit_decisions_total{decision="refused",policy="key"} 1.0' in text
    assert [line.get("rate_limited") for line in logs.events("request")] == [False, True]
    assert logs.events("request")[1]["rate_limit_policy"] == "key"


async def test_concurrent_decisions_share_redis_round_trips(
    gateway_factory: GatewayFactory, upstream: Upstream, redis_server: RedisServer
) -> None:
    store = {"backend": "redis", "url": redis_server.url, "key_prefix": unique_prefix()}
    gw = await gateway_factory(
        limited_config(upstream, store, {"rate_limit": {"requests": 1000, "per": "1m"}})
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert (await client.get(secret))[0] == 200  # warm: the key is cached
    limits = gw.process.limiter.shared if gw.process.limiter else None
    assert isinstance(limits, RedisLimits)
    before = limits.round_trips
    statuses = await asyncio.gather(*(client.get(secret) for _ in range(50)))
    assert [s for s, _, _ in statuses] == [200] * 50
    assert limits.round_trips - before < 50


async def test_limits_keep_counting_when_redis_forgets_the_script(
    gateway_factory: GatewayFactory, upstream: Upstream, shared_stores: tuple[dict[str, Any], ...]
) -> None:
    """A restarted or flushed Redis (each master of a cluster) has lost the limit script:
    it is loaded again where it is missing, and no decision is lost or made twice."""
    store = shared_stores[0]
    gw = await gateway_factory(
        limited_config(upstream, store, {"rate_limit": {"requests": 3, "per": "1m"}})
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert (await client.get(secret))[0] == 200
    redis_client = raw_redis(store)
    try:
        redis_client.script_flush()
    finally:
        redis_client.close()
    statuses = [(await client.get(secret))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
async def test_store_outage_does_what_the_config_says(
    gateway_factory: GatewayFactory, upstream: Upstream, private_redis: RedisServer, mode: str
) -> None:
    server = private_redis
    store = {"backend": "redis", "url": server.url, "key_prefix": unique_prefix()}
    gw = await gateway_factory(
        limited_config(
            upstream,
            store,
            {"rate_limit": {"requests": 2, "per": "1m"}},
            rate_limits={"on_store_error": mode},
        )
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert (await client.get(secret))[0] == 200  # the key is warm in the cache
    server.stop()
    statuses = []
    for _ in range(3):
        status, headers, body = await client.get(secret)
        statuses.append(status)
        if mode == "open":
            assert "RateLimit" not in headers
        elif mode == "closed":
            assert body["error"]["code"] == "unavailable"
            assert headers["Retry-After"] == "1"
        else:
            assert headers["RateLimit-Policy"] == '"key";q=2;w=60'
    assert statuses == {"open": [200] * 3, "closed": [503] * 3, "local": [200, 200, 429]}[mode]
    async with gw.session.get(f"{gw.admin_url}/readyz") as r:
        ready = (await r.json())["data"]
    assert ready["rate_limits"] == {"on_store_error": mode, "degraded": True}
    text = await gw.metrics()
    assert "gateway_rate_limit_degraded 1.0" in text
    # Tried once; for the next second the store is left alone instead of failing slowly.
    assert "gateway_rate_limit_store_errors_total 1.0" in text


async def test_a_redis_that_stops_answering_holds_a_request_only_for_the_batch_deadline(
    gateway_factory: GatewayFactory, upstream: Upstream, private_redis: RedisServer
) -> None:
    """A Redis that is frozen (not gone: its connections stay open, nothing answers) fails the
    limits' batch at its deadline; the request then follows on_store_error, here local."""
    store = {"backend": "redis", "url": private_redis.url, "key_prefix": unique_prefix()}
    gw = await gateway_factory(
        limited_config(
            upstream,
            store,
            {"rate_limit": {"requests": 5, "per": "1m"}},
            rate_limits={"on_store_error": "local"},
        )
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert (await client.get(secret))[0] == 200  # the key is warm in the cache
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        async with asyncio.timeout(BATCH_TIMEOUT + 4):
            status, headers, _ = await client.get(secret)
        waited = time.monotonic() - started
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert status == 200
    assert headers["RateLimit-Policy"] == '"key";q=5;w=60'
    assert waited >= BATCH_TIMEOUT * 0.9  # it did wait for Redis first


async def test_local_counts_survive_a_restart(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """A restart must not hand out a fresh monthly quota."""
    store = {"backend": "local", "path": str(tmp_path / "kept.db")}
    config = limited_config(upstream, store, {"quota": {"requests": 3, "per": "month"}})
    gw = await gateway_factory(config)
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert [(await client.get(secret))[0] for _ in range(3)] == [200] * 3
    await gw.session.close()
    await gw.process.stop()
    again = await gateway_factory(config)
    status, headers, _ = await Client(again).get(secret)
    assert status == 429
    assert headers["RateLimit"].startswith('"quota";r=0;')


@pytest.mark.parametrize(
    ("requests", "per", "burst"),
    [(5, 1.0, 20), (17, 1.0, 0), (10_000, 1.0, 0), (100, 60.0, 0), (10, 60.0, 5), (7, 60.0, 3)],
)
async def test_local_and_redis_decide_identically(
    redis_server: RedisServer, requests: int, per: float, burst: int
) -> None:
    """policy.py and ratelimit.lua are one algorithm: the same inputs, the same answers."""
    prefix = unique_prefix()
    limit = bucket(
        "key",
        f"{prefix}:rl:{{org_x}}:key:k",
        RateLimitConfig(requests=requests, per=per, burst=burst),
    )
    window_end = int((1767225600.3 + 3600) * US)
    quota = Limit(
        "quota",
        f"{prefix}:rl:{{org_x}}:quota:d",
        "window",
        40,
        window_start_us=window_end - 86400 * US,
        window_end_us=window_end,
    )
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        local, shared = LocalLimits(), RedisLimits(client)
        rng = random.Random(requests * 1000 + burst)  # noqa: S311 - a repeatable sequence, no secret
        now = int(1767225600.3 * US)
        for _ in range(150):
            now += rng.choice(
                [0, 0, 1, limit.interval_us // 3, limit.interval_us, 2 * limit.interval_us]
            )
            cost = rng.choice([1, 1, 1, 2])
            for limits in ([limit], [limit, quota]):
                mine = await local.decide(limits, cost, now)
                theirs = await shared.decide(limits, cost, now)
                assert mine == theirs
                for outcome in mine.outcomes:
                    assert outcome.remaining >= 0
    finally:
        await client.aclose()


async def test_a_fresh_key_gets_exactly_requests_plus_burst(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock(1767225600.3)  # an epoch where float seconds used to lose a request
    gw = await gateway_factory(
        limited_config(
            upstream, store_config, {"rate_limit": {"requests": 5, "per": "1s", "burst": 20}}
        ),
        clock=clock,
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    statuses = [(await client.get(secret))[0] for _ in range(26)]
    assert statuses == [200] * 25 + [429]


async def test_the_backends_own_rate_limit_headers_are_replaced_on_limited_routes(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
) -> None:
    from aiohttp import web

    async def limited_backend(request: web.BaseRequest) -> web.Response:
        return web.json_response(
            {}, headers={"RateLimit": '"backend";r=1;t=1', "X-RateLimit-Remaining": "1"}
        )

    up = await upstream_factory(limited_backend)
    gw = await gateway_factory(
        limited_config(
            up,
            store_config,
            {"rate_limit": {"requests": 10, "per": "1m"}},
            routes=[
                {"path": "/v1/x", "upstream": "app", "auth": "key"},
                {"path": "/open", "upstream": "app"},
            ],
        )
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    async with gw.session.get(f"{gw.url}/v1/x", headers={"Authorization": f"Bearer {secret}"}) as r:
        assert r.headers.getall("RateLimit") == ['"key";r=9;t=6']
        assert r.headers.getall("X-RateLimit-Remaining") == ["9"]
    async with gw.session.get(f"{gw.url}/open") as r:  # not limited by us: the backend's pass
        assert r.headers.getall("RateLimit") == ['"backend";r=1;t=1']


def test_a_cost_no_plan_could_ever_allow_is_a_config_error() -> None:
    from gateway.config import ConfigError, parse_config

    text = b"""
plans: {small: {rate_limit: {requests: 3, per: 1m}}}
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes: [{path: /x, upstream: a, cost: 5}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t", env={})
    assert info.value.problems == [
        "routes: routes[0].cost 5 is more than plan 'small' allows at once (rate_limit: 3);"
        " such a request could never pass"
    ]


async def test_limits_of_two_routes_with_one_name_are_separate(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    export = [{"name": "export", "requests": 1, "per": "1h"}]
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {},
            routes=[
                {"path": "/v1/a/export", "upstream": "app", "auth": "key", "rate_limits": export},
                {"path": "/v1/b/export", "upstream": "app", "auth": "key", "rate_limits": export},
            ],
        ),
        clock=FakeClock(),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert [(await client.get(secret, p))[0] for p in ("/v1/a/export", "/v1/b/export")] == [
        200,
        200,
    ]
    assert [(await client.get(secret, p))[0] for p in ("/v1/a/export", "/v1/b/export")] == [
        429,
        429,
    ]
