"""Webhooks shaped for an existing API's receivers: the legacy header's key, the body's field
names (webhooks.payload) and names for the gateway's own events (webhooks.event_aliases)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.config import ConfigError, WebhooksConfig, parse_config
from gateway.webhooks.payload import PayloadShape
from tests.conftest import FakeClock, GatewayFactory, UpstreamFactory
from tests.helpers import Admin, verify_standard_webhooks
from tests.webhooks.test_delivery import (
    Receiver,
    Reply,
    after_attempt,
    deliveries_of,
    hook_config,
    publish,
    subscribe,
)

# The receivers' documentation (seed 004): the example payload, for a lead created at 10:30.
SEED_BODY = """{
  "event": "create",
  "module": "leads",
  "record_id": 42,
  "occurred_at": "2026-06-12T10:30:00+00:00",
  "data": { "id": 42, "name": "Asha Rao", "company": "Acme Pumps", "status": "New" }
}"""
SEED_AT = 1781260200.0  # 2026-06-12T10:30:00Z
SEED_PAYLOAD = {
    "id": None,
    "type": "event",
    "timestamp": "occurred_at",
    "data": "data",
    "lift": ["module", "record_id"],
    "timestamp_format": "iso_offset",
}
# What the backend publishes: the record's module and id beside the record's fields.
PUBLISHED = {
    "module": "leads",
    "record_id": 42,
    "id": 42,
    "name": "Asha Rao",
    "company": "Acme Pumps",
    "status": "New",
}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def hex_hmac(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def shape(**webhooks: Any) -> PayloadShape:
    return PayloadShape(WebhooksConfig.model_validate(webhooks))


async def test_the_seeds_body_arrives_byte_exact_signed_both_ways_and_retried_identically(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    clock = FakeClock(SEED_AT)
    receiver = await Receiver(Reply(500), clock=clock).start(upstream_factory)
    config = hook_config(
        store_config,
        legacy_header="X-Finite-Signature",
        payload=SEED_PAYLOAD,
        event_aliases={"webhook.ping": "ping"},
    )
    gw = await gateway_factory(config, clock=clock)
    admin = Admin(gw)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["create"])
    secret = endpoint["secret"]
    event_id = await publish(admin, "create", PUBLISHED)
    (first,) = await receiver.wait_for(1)
    await after_attempt(admin, endpoint["id"], 1)  # answered 500: due again in 200 ms
    clock.now += 0.2
    _, retry = await receiver.wait_for(2)

    expected = orjson.dumps(orjson.loads(SEED_BODY))  # the seed's fields, in the seed's order
    for got in (first, retry):
        assert got.body == expected
        headers = lower(got.headers)
        assert headers["webhook-id"] == event_id  # ours, though the body carries no id
        assert verify_standard_webhooks(secret, headers, got.body)
        # The receiver's own check, as documented: HMAC-SHA256 of the raw body, keyed with
        # the webhook secret as shown.
        assert headers["x-finite-signature"] == hex_hmac(secret.encode(), got.body)
    assert lower(first.headers)["x-finite-signature"] == lower(retry.headers)["x-finite-signature"]

    status, body = await admin.call("POST", f"/admin/webhooks/{endpoint['id']}/ping")
    assert status == 202, body
    _, _, ping = await receiver.wait_for(3)
    assert ping.body == orjson.dumps(
        {
            "event": "ping",
            "occurred_at": "2026-06-12T10:30:00+00:00",
            "data": {"endpointId": endpoint["id"]},
        }
    )
    assert hex_hmac(secret.encode(), ping.body) == lower(ping.headers)["x-finite-signature"]


@pytest.mark.parametrize("legacy_key", ["secret", "decoded"])
async def test_the_legacy_header_is_keyed_as_configured_by_every_secret_in_force(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, legacy_key: str
) -> None:
    receiver = await Receiver().start(upstream_factory)
    gw = await gateway_factory(
        hook_config({}, legacy_header="X-Finite-Signature", legacy_key=legacy_key)
    )
    admin = Admin(gw)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["*"])
    status, body = await admin.call(
        "POST", f"/admin/webhooks/{endpoint['id']}/rotate", {"overlap": "1h"}
    )
    assert status == 201, body
    old, new = endpoint["secret"], body["data"]["secret"]
    await publish(admin, "invoice.created", {"id": "inv_1"})
    (got,) = await receiver.wait_for(1)
    headers = lower(got.headers)

    def key(secret: str) -> bytes:
        if legacy_key == "secret":
            return secret.encode()
        return base64.b64decode(secret.removeprefix("whsec_"))

    # The newest secret first, as in webhook-signature; the standard headers are unchanged.
    assert headers["x-finite-signature"].split(" ") == [
        hex_hmac(key(new), got.body),
        hex_hmac(key(old), got.body),
    ]
    assert verify_standard_webhooks(old, headers, got.body)
    assert verify_standard_webhooks(new, headers, got.body)


async def test_the_gateways_own_events_carry_their_alias_and_reach_subscribers_of_either_name(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    by_alias = await Receiver().start(upstream_factory)
    by_name = await Receiver().start(upstream_factory)
    gw = await gateway_factory(
        hook_config(
            store_config, event_aliases={"key.created": "key_created", "webhook.ping": "ping"}
        )
    )
    admin = Admin(gw)
    await admin.org("acme", plan="big")
    await subscribe(admin, by_alias.url, ["key_created"])
    named = await subscribe(admin, by_name.url, ["key.created", "ping"])
    key = await admin.key("acme", scopes=["webhooks:write"])
    for receiver in (by_alias, by_name):
        (got,) = await receiver.wait_for(1)
        assert got.event["type"] == "key_created"
        assert got.event["data"]["id"] == key["id"]
    # Delivery records keep the gateway's own name; only the body says the alias.
    (delivery,) = await deliveries_of(admin, named["id"])
    assert delivery["eventType"] == "key.created"

    # A ping from the data plane, as a receiver documented to take "ping" expects it.
    async with gw.session.post(
        f"{gw.url}/v1/webhooks/{named['id']}/ping",
        headers={"Authorization": f"Bearer {key['secret']}"},
    ) as r:
        assert r.status == 202, await r.text()
    _, ping = await by_name.wait_for(2)
    assert ping.event["type"] == "ping"
    assert len(by_alias.received) == 1  # a ping goes to its endpoint alone


async def test_queued_deliveries_keep_the_body_made_when_their_event_was_accepted(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    """webhooks is restart-only: a reload that changes payload is refused, and after a restart
    with another payload the deliveries already queued still send their original bytes."""
    clock = FakeClock()
    receiver = await Receiver(Reply(500), clock=clock).start(upstream_factory)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(hook_config(store_config)))
    first = await gateway_factory(path, clock=clock)
    admin = Admin(first)
    await admin.org()
    endpoint = await subscribe(admin, receiver.url, ["*"])
    event_id = await publish(admin, "invoice.created", {"id": "inv_1"})
    (original,) = await receiver.wait_for(1)
    assert set(original.event) == {"id", "type", "timestamp", "data"}
    await after_attempt(admin, endpoint["id"], 1)  # failed, and due again in 200 ms

    reshaped = {"id": None, "type": "event", "lift": ["id"], "timestamp_format": "unix"}
    path.write_text(yaml.safe_dump(hook_config(store_config, payload=reshaped)))
    assert await first.process.reload() == ["webhooks: changing this needs a restart"]
    await first.process.stop()

    second = await gateway_factory(path, clock=clock)
    clock.now += 0.2
    _, retry = await receiver.wait_for(2)
    assert retry.body == original.body
    assert lower(retry.headers)["webhook-id"] == event_id
    # Events accepted from now on take the new shape.
    await publish(Admin(second), "invoice.created", {"id": "inv_2"})
    *_, new = await receiver.wait_for(3)
    assert new.body == orjson.dumps(
        {"event": "invoice.created", "id": "inv_2", "timestamp": int(clock.now), "data": {}}
    )


def test_the_default_body_is_our_envelope_byte_for_byte() -> None:
    body = shape().body("evt_1", "invoice.created", SEED_AT + 0.25, {"n": [1, 2]})
    assert body == (
        b'{"id":"evt_1","type":"invoice.created",'
        b'"timestamp":"2026-06-12T10:30:00.250Z","data":{"n":[1,2]}}'
    )


def test_lifted_fields_move_out_of_data_and_only_when_present() -> None:
    lifting = shape(payload={"lift": ["module", "record_id"], "timestamp": None})
    assert orjson.loads(lifting.body("evt_1", "create", SEED_AT, {"module": "leads", "n": 1})) == {
        "id": "evt_1",
        "type": "create",
        "module": "leads",
        "data": {"n": 1},
    }
    # Data that is not an object has no fields to lift: it is sent as it is.
    assert orjson.loads(lifting.body("evt_1", "create", SEED_AT, [1])) == {
        "id": "evt_1",
        "type": "create",
        "data": [1],
    }
    unix = shape(payload={"timestamp_format": "unix", "id": "event_id"})
    assert orjson.loads(unix.body("evt_1", "a.b", SEED_AT + 0.9, None)) == {
        "event_id": "evt_1",
        "type": "a.b",
        "timestamp": 1781260200,
        "data": None,
    }


def problems(webhooks: dict[str, Any]) -> list[str]:
    text = yaml.safe_dump({"webhooks": webhooks}).encode()
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml", env={})
    return info.value.problems


@pytest.mark.parametrize(
    ("webhooks", "expected"),
    [
        (
            {"payload": {"type": None, "data": None}},
            [
                "webhooks.payload.type: must name a field"
                " (a body always carries the event's type and data)",
                "webhooks.payload.data: must name a field"
                " (a body always carries the event's type and data)",
            ],
        ),
        (
            {"payload": {"id": "event id", "lift": ["ok", "1st"]}},
            [
                "webhooks.payload.id: must be a field name of 1-64 letters, digits or _,"
                " not starting with a digit (got 'event id')",
                "webhooks.payload.lift[1]: must be a field name of 1-64 letters, digits or _,"
                " not starting with a digit (got '1st')",
            ],
        ),
        (
            {"payload": {"type": "event", "timestamp": "event"}},
            ["webhooks.payload.timestamp: 'event' is already the body's name for type"],
        ),
        (
            {"payload": {"lift": ["data"]}},
            ["webhooks.payload.lift: 'data' is already the body's name for data"],
        ),
        (
            {"payload": {"lift": ["module", "module"]}},
            ["webhooks.payload.lift: 'module' is listed twice"],
        ),
        (
            {"payload": {"lift": [f"f{i}" for i in range(21)]}},
            ["webhooks.payload.lift: at most 20 fields"],
        ),
        (
            {"payload": {"timestamp_format": "rfc3339"}},
            [
                "webhooks.payload.timestamp_format: must be one of 'iso', 'iso_offset' or"
                " 'unix' (got 'rfc3339')"
            ],
        ),
        (
            {"legacy_key": "raw"},
            ["webhooks.legacy_key: must be one of 'secret' or 'decoded' (got 'raw')"],
        ),
        (
            {"event_aliases": {"lead.created": "created"}},
            [
                "webhooks.event_aliases: 'lead.created' is not an event of the gateway's own"
                " (those are webhook.ping, key.created, key.revoked, key.rotated, key.expiring)"
            ],
        ),
        (
            {"event_aliases": {"webhook.ping": "a ping"}},
            [
                "webhooks.event_aliases: webhook.ping: must be 1-100 letters, digits or _.:-"
                " starting with a letter or digit (got 'a ping')"
            ],
        ),
        (
            {"event_aliases": {"key.created": "key", "key.revoked": "key"}},
            ["webhooks.event_aliases: key.revoked: 'key' is already the alias of key.created"],
        ),
        (
            {"event_aliases": {"key.created": "key.revoked"}},
            ["webhooks.event_aliases: key.created: 'key.revoked' is the name of another event"],
        ),
    ],
)
def test_bad_payloads_and_aliases_are_config_errors_naming_the_field(
    webhooks: dict[str, Any], expected: list[str]
) -> None:
    assert problems(webhooks) == expected
