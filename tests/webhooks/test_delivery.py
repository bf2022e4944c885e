"""Webhooks end to end: real receivers on 127.0.0.1, real HTTP through the gateway, both stores."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.webhooks.secret_box import SecretBox, SecretUnavailable
from gateway.webhooks.sender import Sender
from tests.conftest import (
    ADMIN_TOKEN,
    FakeClock,
    GatewayFactory,
    RedisServer,
    Spawn,
    UpstreamFactory,
    make_config,
    raw_redis,
    unique_prefix,
)
from tests.helpers import Admin, eventually, verify_standard_webhooks


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return orjson.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"


class Receiver:
    """A webhook receiver: records every request (when, by the gateway's clock), answers from a
    script (then 200)."""

    def __init__(self, *replies: Reply, clock: Callable[[], float] = time.time) -> None:
        self.replies = list(replies)
        self.received: list[Received] = []
        self.arrived = asyncio.Event()
        self.url = ""
        self.clock = clock

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(dict(request.headers), body, self.clock()))
        self.arrived.set()
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)  # a slow receiver, in real time
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def start(self, factory: UpstreamFactory) -> Receiver:
        upstream = await factory(self.handle)
        self.url = f"{upstream.url}/hooks"
        return self

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        try:
            await eventually(lambda: len(self.received) >= count, timeout)
        except AssertionError:
            raise AssertionError(f"{len(self.received)} of {count} deliveries arrived") from None
        return self.received


def hook_config(store: dict[str, Any], **webhooks: Any) -> dict[str, Any]:
    return make_config(
        {},
        [],
        store=store,
        plans={"free": {"webhook_endpoints": 2}, "big": {}},
        webhooks={
            "allow_private_targets": True,
            "jitter": 0,
            "retry_schedule": ["200ms", "400ms"],
            "timeout": "2s",
            "poll_interval": "100ms",
            **webhooks,
        },
    )


async def subscribe(admin: Admin, url: str, events: list[str], org: str = "acme") -> dict[str, Any]:
    status, body = await admin.call(
        "POST", f"/admin/orgs/{org}/webhooks", {"url": url, "events": events}
    )
    assert status == 201, body
    return body["data"]  # type: ignore[no-any-return]


async def publish(admin: Admin, event_type: str, data: Any, org: str = "acme") -> str:
    status, body = await admin.call(
        "POST", "/admin/events", {"org": org, "type": event_type, "data": data}
    )
    assert status == 202, body
    return body["data"]["id"]  # type: ignore[no-any-return]


async def deliveries_of(admin: Admin, endpoint_id: str) -> list[dict[str, Any]]:
    status, body = await admin.call("GET", f"/admin/webhooks/{endpoint_id}/deliveries")
    assert status == 200, body
    return body["data"]  # type: ignore[no-any-return]


async def after_attempt(admin: Admin, endpoint_id: str, number: int) -> dict[str, Any]:
    """The endpoint's one delivery, once the outcome of its attempt ``number`` is recorded."""

    async def recorded() -> dict[str, Any] | None:
        (delivery,) = await deliveries_of(admin, endpoint_id)
        return delivery if delivery["attempts"] == number else None

    delivery = await eventually(recorded)
    assert delivery is not None
    return delivery


def timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_a_published_event_arrives_signed_the_standard_way(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    receiver = await Receiver().start(upstream_factory)
    gw = await gateway_factory(hook_config(store_config, legacy_header="X-Finite-Signature"))
    admin = Admin(gw)
    await admin.org("acme")
    await admin.org("other")
    endpoint = await subscribe(admin, receiver.url, ["invoice.created"])
    assert endpoint["id"].startswith("wh_")
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["status"] == "enabled"
    assert endpoint["events"] == ["invoice.created"]
    status, shown = await admin.call("GET", f"/admin/webhooks/{endpoint['id']}")
    assert status == 200
    assert "secret" not in shown["data"]

    await publish(admin, "member.added", {"n": 0})  # not subscribed
    await publish(admin, "invoice.created", {"n": 0}, org="other")  # another org
    event_id = await publish(admin, "invoice.created", {"id": "inv_1", "total": 120})
    assert event_id.startswith("evt_")
    (got,) = await receiver.wait_for(1)

    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["webhook-id"] == event_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["content-type"] == "application/json"
    assert verify_standard_webhooks(endpoint["secret"], headers, got.body)
    # legacy_key: secret (the default) keys it with the secret string as shown.
    key = endpoint["secret"].encode()
    legacy = "sha256=" + hmac.new(key, got.body, hashlib.sha256).hexdigest()
    assert headers["x-finite-signature"] == legacy
    event = got.event
    assert set(event) == {"id", "type", "timestamp", "data"}
    assert event["id"] == event_id
    assert event["type"] == "invoice.created"
    assert event["data"] == {"id": "inv_1", "total": 120}

    async def recorded() -> bool:
        listed = await deliveries_of(admin, endpoint["id"])
        return bool(listed) and listed[0]["status"] == "succeeded"

    await eventually(recorded)
    # The one delivery to the one endpoint at this receiver: the other events made none.
    (delivery,) = await deliveries_of(admin, endpoint["id"])
    assert len(receiver.received) == 1
    assert delivery["eventId"] == event_id
    assert delivery["attempts"] == 1
    (attempt,) = delivery["history"]
    assert attempt["status"] == 200
    assert attempt["success"]
    assert attempt["response"] == "ok"
    metrics = await gw.metrics()
    assert 'gateway_webhook_deliveries_total{result="delivered"} 1.0' in metrics
    assert "gateway_webhook_delivery_latency_seconds_count 1.0" in metrics


async def test_a_failing_endpoint_is_retried_on_schedule_then_dead(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    clock = FakeClock()
    replies = (Reply(500, body=b"boom " * 500) for _ in range(3))
    receiver = await Receiver(*replies, clock=clock).start(upstream_factory)
    gw = await gateway_factory(hook_config(store_config), clock=clock)
    admin = Admin(gw)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["*"])
    event_id = await publish(admin, "invoice.created", {"id": "inv_2"})
    for number, wait in enumerate([0.2, 0.4], 1):  # the retry schedule, on the injected clock
        await receiver.wait_for(number)
        retrying = await after_attempt(admin, endpoint["id"], number)
        assert timestamp(retrying["nextAttemptAt"]) == pytest.approx(clock.now + wait, abs=1e-3)
        clock.now += wait
    attempts = await receiver.wait_for(3)

    async def dead() -> bool:
        return (await deliveries_of(admin, endpoint["id"]))[0]["status"] == "dead"

    await eventually(dead)
    clock.now += 60.0  # far past the schedule
    await asyncio.sleep(0.3)  # quiet for three polls: absence takes real time to show
    assert len(receiver.received) == 3  # dead means no more attempts
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert gaps == pytest.approx([0.2, 0.4]), gaps
    for got in attempts:
        headers = {k.lower(): v for k, v in got.headers.items()}
        assert headers["webhook-id"] == event_id  # the same message, for deduplication
        assert verify_standard_webhooks(endpoint["secret"], headers, got.body)
    (delivery,) = await deliveries_of(admin, endpoint["id"])
    assert delivery["attempts"] == 3
    assert delivery["nextAttemptAt"] is None
    assert [a["status"] for a in delivery["history"]] == [500, 500, 500]
    assert len(delivery["history"][0]["response"]) == 1024  # the first KiB only
    assert delivery["history"][0]["error"] == "answered 500"

    # A manual retry makes one more attempt; the receiver has recovered.
    status, body = await admin.call("POST", f"/admin/deliveries/{delivery['id']}/retry")
    assert status == 202
    assert body["data"]["status"] in ("pending", "delivering")
    await receiver.wait_for(4)

    async def succeeded() -> bool:
        return (await deliveries_of(admin, endpoint["id"]))[0]["status"] == "succeeded"

    await eventually(succeeded)
    status, body = await admin.call("GET", f"/admin/deliveries/{delivery['id']}")
    assert status == 200
    assert body["data"]["attempts"] == 4


async def test_retry_after_is_honoured_and_redirects_are_failures(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    clock = FakeClock()
    receiver = await Receiver(
        Reply(503, {"Retry-After": "1"}),
        Reply(302, {"Location": "/elsewhere"}),
        Reply(204),
        clock=clock,
    ).start(upstream_factory)
    gw = await gateway_factory(
        hook_config({}, retry_schedule=["100ms", "100ms", "100ms"]), clock=clock
    )
    admin = Admin(gw)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["invoice.created"])
    await publish(admin, "invoice.created", {})
    # Retry-After: 1 beats the 100 ms schedule; then the schedule again.
    for number, wait in enumerate([1.0, 0.1], 1):
        await receiver.wait_for(number)
        retrying = await after_attempt(admin, endpoint["id"], number)
        assert timestamp(retrying["nextAttemptAt"]) == pytest.approx(clock.now + wait, abs=1e-3)
        clock.now += wait
    first, second, third = await receiver.wait_for(3)
    assert second.at - first.at == pytest.approx(1.0)
    assert third.at - second.at < 1.0
    delivery = await after_attempt(admin, endpoint["id"], 3)
    assert len(receiver.received) == 3  # the redirect was not followed
    assert delivery["status"] == "succeeded"
    assert [a["error"] for a in delivery["history"]] == [
        "answered 503",
        "redirects are not followed",
        None,
    ]


async def test_gone_disables_the_endpoint(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    receiver = await Receiver(Reply(410)).start(upstream_factory)
    gw = await gateway_factory(hook_config({}))
    admin = Admin(gw)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["*"])
    await publish(admin, "a.b", {})
    await receiver.wait_for(1)

    async def disabled() -> bool:
        _, body = await admin.call("GET", f"/admin/webhooks/{endpoint['id']}")
        return bool(body["data"]["status"] == "disabled")

    await eventually(disabled)
    _, body = await admin.call("GET", f"/admin/webhooks/{endpoint['id']}")
    assert "410" in body["data"]["disabledReason"]
    (delivery,) = await deliveries_of(admin, endpoint["id"])
    assert delivery["status"] == "dead"
    assert delivery["attempts"] == 1
    await publish(admin, "a.b", {})
    await asyncio.sleep(0.4)  # quiet for four polls: absence takes real time to show
    assert len(receiver.received) == 1
    # Enabled again by an admin, it receives events again.
    status, body = await admin.call(
        "PATCH", f"/admin/webhooks/{endpoint['id']}", {"status": "enabled"}
    )
    assert status == 200
    assert body["data"]["disabledReason"] is None
    await publish(admin, "a.b", {})
    await receiver.wait_for(2)


async def test_private_targets_are_refused_at_registration_and_at_connect_time(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    receiver = await Receiver().start(upstream_factory)
    gw = await gateway_factory(hook_config({}, allow_private_targets=False))
    admin = Admin(gw)
    await admin.org()
    for url, message in [
        (receiver.url, "url: points to a loopback address"),
        ("http://localhost:9/hook", "url: names a host that resolves to a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "IPv4"),
        ("http://169.254.169.254/latest", "cloud metadata"),
        ("file:///etc/passwd", "http(s)"),
    ]:
        status, body = await admin.call(
            "POST", "/admin/orgs/acme/webhooks", {"url": url, "events": ["*"]}
        )
        assert status == 400, body
        assert message in body["error"]["message"], body
    # At connect time the resolved address is checked again, whatever registration saw.
    sender = Sender(allow_private=False, max_connections=4)
    await sender.startup()
    try:
        port = receiver.url.split(":")[2].split("/")[0]
        for url in (f"http://localhost:{port}/hooks", receiver.url):
            result = await sender.send(
                url,
                secrets=["whsec_" + base64.b64encode(b"k" * 32).decode()],
                message_id="evt_1",
                payload=b"{}",
                time_limit=2,
                legacy_header=None,
                legacy_key="secret",
                clock=time.time(),
            )
            assert result.status is None
            assert result.error is not None
            assert result.error.startswith("refused:")
            assert "loopback" in result.error
    finally:
        await sender.shutdown()
    assert receiver.received == []


async def test_keys_manage_their_own_orgs_endpoints_on_the_data_plane(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    receiver = await Receiver().start(upstream_factory)
    gw = await gateway_factory(hook_config(store_config))
    admin = Admin(gw)
    await admin.org("acme")
    await admin.org("other", plan="big")
    writer = (await admin.key("acme", scopes=["webhooks:write"]))["secret"]
    reader = (await admin.key("acme", scopes=["contacts:read"]))["secret"]
    outsider = await subscribe(admin, receiver.url, ["*"], org="other")

    async def call(method: str, path: str, secret: str, body: Any = None) -> tuple[int, Any]:
        async with gw.session.request(
            method,
            f"{gw.url}/v1/webhooks{path}",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
        ) as r:
            return r.status, await r.json()

    status, body = await call("POST", "", writer, {"url": receiver.url, "events": ["a.b"]})
    assert status == 201, body
    mine = body["data"]
    assert mine["secret"].startswith("whsec_")
    assert body["meta"]["request_id"]
    status, body = await call("GET", "", reader)
    assert status == 403
    assert body["error"]["code"] == "insufficient_scope"
    status, body = await call("GET", "", writer)
    assert status == 200
    assert [e["id"] for e in body["data"]] == [mine["id"]]
    assert body["meta"]["limits"] == {"webhookEndpoints": {"limit": 2, "used": 1}}
    assert "secret" not in body["data"][0]
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/ping")]:
        status, body = await call(method, f"/{outsider['id']}{path}", writer, {})
        assert status == 404, (method, path)
        assert body["error"]["code"] == "not_found", (method, path)
    status, body = await call("PATCH", f"/{mine['id']}", writer, {"events": ["a.b", "c.d"]})
    assert status == 200
    assert body["data"]["events"] == ["a.b", "c.d"]
    status, body = await call("PATCH", f"/{mine['id']}", writer, {"events": []})
    assert status == 400
    assert "events" in body["error"]["message"]
    status, body = await call("PUT", f"/{mine['id']}", writer, {})
    assert status == 405
    assert (await call("POST", "", writer, {"url": receiver.url, "events": ["*"]}))[0] == 201
    status, body = await call("POST", "", writer, {"url": receiver.url, "events": ["*"]})
    assert status == 403, body
    assert body["error"]["code"] == "plan_limit_reached", body
    assert "free" in body["error"]["message"]

    # ping reaches this endpoint alone, whatever its filter; rotation signs with both secrets.
    status, body = await call("POST", f"/{mine['id']}/rotate", writer, {"overlap": "1h"})
    assert status == 201
    assert body["data"]["secretRotating"] is True
    new_secret = body["data"]["secret"]
    status, body = await call("POST", f"/{mine['id']}/ping", writer)
    assert status == 202
    assert body["data"]["eventId"].startswith("evt_")
    (got,) = await receiver.wait_for(1)
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert got.event["type"] == "webhook.ping"
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify_standard_webhooks(mine["secret"], headers, got.body)
    assert verify_standard_webhooks(new_secret, headers, got.body)

    async def listed() -> bool:
        status, body = await call("GET", f"/{mine['id']}/deliveries", writer)
        return status == 200 and body["data"] and body["data"][0]["status"] == "succeeded"

    await eventually(listed)
    _, body = await call("GET", f"/{mine['id']}/deliveries", writer)
    delivery_id = body["data"][0]["id"]
    status, body = await call("GET", f"/{mine['id']}/deliveries/{delivery_id}", writer)
    assert status == 200
    assert body["data"]["id"] == delivery_id
    status, body = await call("GET", f"/{outsider['id']}/deliveries/{delivery_id}", writer)
    assert status == 404
    status, body = await call("POST", f"/{mine['id']}/deliveries/{delivery_id}/retry", writer)
    assert status == 202
    await receiver.wait_for(2)
    status, body = await call("DELETE", f"/{mine['id']}", writer)
    assert status == 200
    assert body["data"] == {"id": mine["id"], "deleted": True}
    assert (await call("GET", f"/{mine['id']}", writer))[0] == 404


async def test_key_lifecycle_events(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    receiver = await Receiver().start(upstream_factory)
    gw = await gateway_factory(hook_config(store_config, key_expiring_notice="2h"))
    admin = Admin(gw)
    await admin.org()
    types = ["key.created", "key.revoked", "key.rotated", "key.expiring"]
    await subscribe(admin, receiver.url, types)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    soon = await admin.key(expiresAt=expires)
    later = await admin.key()
    await receiver.wait_for(3)
    status, _ = await admin.call("POST", f"/admin/keys/{soon['id']}/revoke")
    assert status == 200
    await admin.call("POST", f"/admin/keys/{soon['id']}/revoke")  # announced once
    status, _ = await admin.call("POST", f"/admin/keys/{later['id']}/rotate", {"grace": "1h"})
    assert status == 201
    await receiver.wait_for(5)
    await asyncio.sleep(0.3)  # quiet for three polls: an event announced twice would show
    seen = sorted((r.event["type"], r.event["data"]["id"]) for r in receiver.received)
    assert seen == sorted(
        [
            ("key.created", soon["id"]),
            ("key.expiring", soon["id"]),
            ("key.created", later["id"]),
            ("key.revoked", soon["id"]),
            ("key.rotated", later["id"]),
        ]
    )
    for got in receiver.received:
        assert b"secret" not in got.body
        assert soon["secret"].encode() not in got.body
        assert later["secret"].encode() not in got.body


async def test_a_slow_endpoint_does_not_hold_up_the_others(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    slow = await Receiver(*(Reply(delay=3.0) for _ in range(60))).start(upstream_factory)
    fast = await Receiver().start(upstream_factory)
    gw = await gateway_factory(
        hook_config({}, concurrency=4, per_endpoint_concurrency=2, timeout="5s")
    )
    admin = Admin(gw)
    await admin.org("acme", plan="big")
    await subscribe(admin, slow.url, ["report.ready"])
    await subscribe(admin, fast.url, ["invoice.created"])
    for i in range(60):  # a backlog at the slow endpoint, older than what follows
        await publish(admin, "report.ready", {"n": i})
    await slow.wait_for(2)
    started = time.monotonic()
    await publish(admin, "invoice.created", {})
    await fast.wait_for(1, timeout=2.0)
    assert time.monotonic() - started < 1.5
    assert len(slow.received) == 2  # never more than its share at once


async def test_events_from_a_redis_stream(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    shared_stores: tuple[dict[str, Any], ...],
) -> None:
    receiver = await Receiver().start(upstream_factory)
    store = shared_stores[0]
    prefix = store["key_prefix"]
    gw = await gateway_factory(hook_config(store))
    admin = Admin(gw)
    await admin.org()
    await subscribe(admin, receiver.url, ["invoice.created"])
    client = (
        aioredis.RedisCluster.from_url(store["url"])
        if store.get("cluster")
        else aioredis.Redis.from_url(store["url"])
    )
    stream = f"{prefix}:events"
    try:
        await client.xadd(stream, {"org": "acme", "type": "invoice.created"})  # data: {}
        await client.xadd(stream, {"org": "acme"})  # no type: refused, not retried
        await client.xadd(stream, {"org": "nobody", "type": "invoice.created"})
        await client.xadd(stream, {"org": "acme", "type": "invoice.created", "data": "{bad"})
        deep = "[" * 300 + "]" * 300  # valid JSON that no delivery body could carry
        await client.xadd(stream, {"org": "acme", "type": "invoice.created", "data": deep})
        await client.xadd(
            stream, {"org": "acme", "type": "invoice.created", "data": '{"id": "inv_9"}'}
        )
        await receiver.wait_for(2)

        async def drained() -> bool:
            pending = await client.xpending(stream, "gateway")
            return bool(pending["pending"] == 0 and await client.xlen(stream) == 0)

        await eventually(drained)
        await asyncio.sleep(0.3)  # quiet for three polls: a refused entry delivered would show
        assert sorted(orjson.dumps(r.event["data"]) for r in receiver.received) == [
            b'{"id":"inv_9"}',
            b"{}",
        ]
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# Processes: a delivery survives kill -9, and instances sharing Redis never double-deliver.


def _process_config(store: dict[str, Any], **webhooks: Any) -> dict[str, Any]:
    config = hook_config(store, **webhooks)
    config.pop("admin")  # spawn_gateway picks the ports; the token stays
    config["admin"] = {"token": ADMIN_TOKEN}
    return config


async def test_a_delivery_in_flight_survives_kill_9(
    spawn_gateway: Spawn,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
) -> None:
    import aiohttp

    receiver = await Receiver(Reply(delay=30)).start(upstream_factory)
    config = _process_config(store_config, timeout="1s")  # the lease is 2 x 1 s + 5 s
    first = spawn_gateway(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(first, session)
        await admin.org()
        endpoint = await subscribe(admin, receiver.url, ["invoice.created"])
        event_id = await publish(admin, "invoice.created", {"id": "inv_k9"})
        await receiver.wait_for(1)  # the attempt is in flight: kill the gateway now
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        second = spawn_gateway(config)
        admin = Admin(second, session)
        again = await receiver.wait_for(2, timeout=15)
        assert again[1].event["id"] == event_id
        assert {k.lower(): v for k, v in again[1].headers.items()}["webhook-id"] == event_id

        async def succeeded() -> bool:
            listed = await deliveries_of(admin, endpoint["id"])
            return bool(listed[0]["status"] == "succeeded")

        await eventually(succeeded)
        (delivery,) = await deliveries_of(admin, endpoint["id"])
        assert delivery["attempts"] == 1  # the killed attempt never finished


async def test_instances_sharing_redis_deliver_each_event_once(
    spawn_gateway: Spawn,
    upstream_factory: UpstreamFactory,
    shared_stores: tuple[dict[str, Any], ...],
) -> None:
    import aiohttp

    receiver = await Receiver(*(Reply(delay=0.05) for _ in range(60))).start(upstream_factory)
    a, b = (spawn_gateway(_process_config(store)) for store in shared_stores)
    async with aiohttp.ClientSession() as session:
        admin_a, admin_b = Admin(a, session), Admin(b, session)
        await admin_a.org("acme", plan="big")
        await subscribe(admin_a, receiver.url, ["*"])
        ids = await asyncio.gather(
            *(
                publish(admin_a if i % 2 else admin_b, "invoice.created", {"n": i})
                for i in range(40)
            )
        )
        await receiver.wait_for(40, timeout=15)
        await asyncio.sleep(1.0)  # quiet: a second delivery by the other instance would show
    delivered = [
        {k.lower(): v for k, v in r.headers.items()}["webhook-id"] for r in receiver.received
    ]
    assert sorted(delivered) == sorted(ids)  # each once, none twice
    logs = a.log_text() + b.log_text()
    assert logs.count('"event":"webhook_attempt"') == 40


async def test_endpoint_secrets_can_be_kept_encrypted_at_rest(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    receiver = await Receiver().start(upstream_factory)
    gw = await gateway_factory(hook_config(store_config, secret_key="k" * 40))
    admin = Admin(gw)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["*"])
    status, body = await admin.call("POST", f"/admin/webhooks/{endpoint['id']}/rotate", {})
    assert status == 201
    rotated = body["data"]["secret"]
    await publish(admin, "invoice.created", {})
    (got,) = await receiver.wait_for(1)
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert verify_standard_webhooks(endpoint["secret"], headers, got.body)
    assert verify_standard_webhooks(rotated, headers, got.body)
    status, body = await admin.call("GET", "/admin/config")
    assert body["data"]["config"]["webhooks"]["secret_key"] == "***"
    if store_config["backend"] == "local":
        path = Path(store_config["path"])
        blob = b"".join(p.read_bytes() for p in path.parent.glob(f"{path.name}*"))
    else:
        client = raw_redis(store_config)
        blob = b""
        for name in client.scan_iter(match=f"{store_config['key_prefix']}:*:ep:*"):
            blob += client.get(name) or b""
        client.close()
    assert b"enc:v1:" in blob
    for secret in (endpoint["secret"], rotated):
        assert secret.removeprefix("whsec_").encode() not in blob


def test_a_secret_box_opens_only_with_its_key() -> None:
    box = SecretBox("a" * 32)
    sealed = box.seal("whsec_abc")
    assert sealed.startswith("enc:v1:")
    assert box.seal("whsec_abc") != sealed  # a fresh nonce every time
    assert box.open(sealed) == "whsec_abc"
    assert box.open("whsec_plain") == "whsec_plain"  # kept before encryption was turned on
    assert SecretBox(None).seal("whsec_abc") == "whsec_abc"
    for other in (SecretBox("b" * 32), SecretBox(None)):
        with pytest.raises(SecretUnavailable):
            other.open(sealed)


async def test_odd_answers_and_odd_hosts_still_end_on_the_schedule(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    receiver = await Receiver(
        Reply(503, {"Retry-After": "²"}),
        Reply(429, {"Retry-After": "Sat, 1 Jan 99999999999 00:00:00 GMT"}),
    ).start(upstream_factory)
    gw = await gateway_factory(hook_config({}))
    admin = Admin(gw)
    await admin.org("acme", plan="big")
    good = await subscribe(admin, receiver.url, ["*"])
    odd = await subscribe(admin, "http://a..b/hook", ["*"])  # no resolver can encode it
    await publish(admin, "invoice.created", {})
    await receiver.wait_for(3)

    async def finished() -> bool:
        states = [(await deliveries_of(admin, e["id"]))[0]["status"] for e in (good, odd)]
        return states == ["succeeded", "dead"]

    await eventually(finished)
    (delivery,) = await deliveries_of(admin, odd["id"])
    assert delivery["attempts"] == 3
    assert all(a["status"] is None and a["error"] for a in delivery["history"])


async def test_a_host_that_cannot_resolve_is_a_clear_400(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(hook_config({}, allow_private_targets=False))
    admin = Admin(gw)
    await admin.org()
    for url in ("http://a..b/hook", f"http://{'x' * 64}.example/hook"):
        status, body = await admin.call(
            "POST", "/admin/orgs/acme/webhooks", {"url": url, "events": ["*"]}
        )
        assert status == 400, body
        assert "does not resolve" in body["error"]["message"]


async def test_the_dispatcher_stops_when_a_wake_up_comes_just_before_the_stop(
    gateway_factory: GatewayFactory,
) -> None:
    """An attempt that ends as the gateway stops wakes the dispatcher as it is cancelled.

    The cancellation used to be swallowed there (asyncio.wait_for on Python 3.11), and the
    gateway's stop waited forever for a loop that went on polling.
    """
    gw = await gateway_factory(hook_config({}, poll_interval="1h"))
    dispatcher = gw.process.dispatcher
    assert dispatcher is not None
    for turns in range(3):  # the stop comes 0, 1 or 2 turns of the event loop after the wake
        await asyncio.sleep(0.3)  # the dispatcher has looked once and waits for a wake-up
        loop = dispatcher._loop_task
        assert loop is not None
        dispatcher.wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        stop = asyncio.create_task(dispatcher.shutdown())
        done, _ = await asyncio.wait({stop}, timeout=5)
        assert done, f"the dispatcher did not stop ({turns} turns after a wake-up)"
        await stop
        # Stopped by the first cancellation, not by the shutdown's second try.
        assert loop.cancelled()
        assert loop.cancelling() == 1, f"a cancellation was swallowed ({turns} turns)"
        await dispatcher.startup()


async def test_with_workers_the_supervisor_takes_events_and_the_workers_deliver(
    spawn_gateway: Spawn,
    upstream_factory: UpstreamFactory,
    redis_server: RedisServer,
) -> None:
    import aiohttp

    receiver = await Receiver().start(upstream_factory)
    store = {"backend": "redis", "url": redis_server.url, "key_prefix": unique_prefix()}
    gp = spawn_gateway({**_process_config(store), "workers": 2})
    async with aiohttp.ClientSession() as session:
        admin = Admin(gp, session)

        async def ready() -> int:
            async with session.get(f"{gp.admin_url}/readyz") as r:
                return r.status

        await eventually(ready, 10, expect=200, interval=0.1)  # the workers come up one by one
        await admin.org("acme", plan="big")
        key = await admin.key("acme", scopes=["webhooks:write"])
        await subscribe(admin, receiver.url, ["invoice.created"])
        ids = [await publish(admin, "invoice.created", {"n": i}) for i in range(10)]
        await receiver.wait_for(10)
        # The data plane (served by the workers) manages the same org's endpoints.
        async with session.get(
            f"{gp.url}/v1/webhooks", headers={"Authorization": f"Bearer {key['secret']}"}
        ) as r:
            assert r.status == 200
            assert len((await r.json())["data"]) == 1

        async def all_counted() -> bool:
            async with session.get(f"{gp.admin_url}/metrics") as r:
                return 'gateway_webhook_deliveries_total{result="delivered"} 10.0' in await r.text()

        # A delivery is counted once its outcome is recorded, after the receiver has it.
        await eventually(all_counted)
    delivered = sorted(
        {k.lower(): v for k, v in got.headers.items()}["webhook-id"] for got in receiver.received
    )
    assert delivered == sorted(ids)


async def test_filters_on_the_published_data_choose_the_events_an_endpoint_gets(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    """ "Filter by module list": an endpoint with filters gets only the events whose data holds
    a wanted value in each filtered field (integers compared as text); a ping still reaches it;
    a PATCH replaces the filters and {} removes them; bad filters are a 400 naming the field."""
    leads = await Receiver().start(upstream_factory)
    everything = await Receiver().start(upstream_factory)
    gw = await gateway_factory(hook_config(store_config))
    admin = Admin(gw)
    await admin.org("acme")
    status, body = await admin.call(
        "POST",
        "/admin/orgs/acme/webhooks",
        {"url": leads.url, "events": ["*"], "filters": {"module": ["leads", "deals"]}},
    )
    assert status == 201, body
    filtered = body["data"]
    assert filtered["filters"] == {"module": ["leads", "deals"]}
    await subscribe(admin, everything.url, ["*"])

    await publish(admin, "create", {"module": "contacts", "record_id": 1})
    await publish(admin, "create", {"record_id": 2})  # no module at all
    await publish(admin, "create", ["not", "an", "object"])
    await publish(admin, "update", {"module": "deals", "record_id": 3})
    await everything.wait_for(4)
    (got,) = await leads.wait_for(1)
    assert got.event["data"] == {"module": "deals", "record_id": 3}

    status, _ = await admin.call("POST", f"/admin/webhooks/{filtered['id']}/ping")
    assert status == 202
    ping = (await leads.wait_for(2))[1]
    assert ping.event["type"] == "webhook.ping"

    changed = await admin.data(
        "PATCH", f"/admin/webhooks/{filtered['id']}", {"filters": {"record_id": ["4"]}}
    )
    assert changed["filters"] == {"record_id": ["4"]}
    await publish(admin, "create", {"module": "leads", "record_id": 4})
    assert (await leads.wait_for(3))[2].event["data"]["record_id"] == 4
    cleared = await admin.data("PATCH", f"/admin/webhooks/{filtered['id']}", {"filters": {}})
    assert cleared["filters"] == {}

    for filters, text in (
        ({"mod ule": ["x"]}, "not a field name"),
        ({"module": []}, "list 1 to 100 values"),
        ({f"f{i}": ["x"] for i in range(11)}, "at most 10 fields"),
        ({"module": "leads"}, "filters"),
    ):
        status, body = await admin.call(
            "POST",
            "/admin/orgs/acme/webhooks",
            {"url": leads.url, "events": ["*"], "filters": filters},
        )
        assert status == 400, body
        assert text in body["error"]["message"], body
