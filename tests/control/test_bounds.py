"""Admin API bounds: durations, times and limits are checked before anything is written, and an
odd time already in a store renders instead of taking its endpoints down."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.api.views import iso
from gateway.store.redis_keyspace import Keyspace
from gateway.store.webhook_models import Attempt, Delivery, Endpoint, Secret
from gateway.webhooks.service import delivery_view, endpoint_view
from tests.conftest import (
    FakeClock,
    GatewayFactory,
    LogLines,
    RunningGateway,
    closed_port_url,
    make_config,
    raw_redis,
)
from tests.helpers import ADMIN, Admin

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
DAY = 86400.0
HUGE_GRACE = 99999999999 * DAY  # what "99999999999d" used to store: the year 273792727
TOO_MANY_DIGITS = "9" * 400 + "s"  # parses to inf, which JSON stores as null: "never expires"


def bounds_config(store: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return make_config(
        {},
        [],
        store=store,
        plans={"free": {}},
        webhooks={"allow_private_targets": True, "retry_schedule": ["1s"]},
        **extra,
    )


async def me(gw: RunningGateway, secret: str) -> int:
    async with gw.session.get(
        f"{gw.url}/v1/me", headers={"Authorization": f"Bearer {secret}"}
    ) as r:
        return r.status


async def refused(admin: Admin, method: str, path: str, body: Any, field: str) -> str:
    status, answer = await admin.call(method, path, body)
    assert status == 400, (body, answer)
    assert answer["error"]["code"] == "bad_request", answer
    message: str = answer["error"]["message"]
    assert message.startswith((f"{field}: ", f"{field}.")), (body, message)
    return message


async def key_count(admin: Admin, org: str = "acme") -> int:
    status, body = await admin.call("GET", f"/admin/orgs/{org}/keys")
    assert status == 200, body
    return len(body["data"])


async def test_a_rotation_grace_out_of_bounds_is_refused_and_writes_nothing(
    gateway_factory: GatewayFactory, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(bounds_config(store_config))
    admin = Admin(gw)
    await admin.org()
    key = await admin.key()
    path = f"/admin/keys/{key['id']}/rotate"
    message = await refused(admin, "POST", path, {"grace": "99999999999d"}, "grace")
    assert message == "grace: must be at most 30d (got '99999999999d')"
    graces: list[Any] = ["31d", 30 * DAY + 1, 1e308, TOO_MANY_DIGITS, -1, "-1s", True, "soon", None]
    for grace in graces:
        await refused(admin, "POST", path, {"grace": grace}, "grace")
    assert await key_count(admin) == 1
    status, shown = await admin.call("GET", f"/admin/keys/{key['id']}")
    assert status == 200
    assert (shown["data"]["expiresAt"], shown["data"]["rotatedTo"]) == (None, None)
    assert await me(gw, key["secret"]) == 200


async def test_a_grace_of_30_days_is_the_largest_accepted(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    clock = FakeClock(NOW)
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}), clock=clock)
    admin = Admin(gw)
    await admin.org()
    key = await admin.key()
    status, body = await admin.call("POST", f"/admin/keys/{key['id']}/rotate", {"grace": "30d"})
    assert status == 201, body
    assert body["data"]["secret"].startswith("fw_live_")
    _, shown = await admin.call("GET", f"/admin/keys/{key['id']}")
    assert shown["data"]["expiresAt"] == "2026-01-31T00:00:00.000Z"
    assert shown["data"]["rotatedTo"] == body["data"]["id"]


async def test_a_key_expiry_must_be_an_rfc3339_time_within_ten_years(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    clock = FakeClock(NOW)
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}), clock=clock)
    admin = Admin(gw)
    await admin.org()
    path = "/admin/orgs/acme/keys"
    far = "must be at most 3650d from now"
    cases: dict[Any, str] = {
        "9999-12-31T23:59:59-23:59": far,  # the year 10000 in UTC: no datetime holds it
        "2035-12-30T02:00:01+02:00": far,  # 3650d and 1s from NOW
        "2025-12-31T23:59:59Z": "must be in the future",
        "2030-01-01T00:00:00": "must include a time zone",
        4102444800: "must be an RFC 3339 time",  # a number: seconds or milliseconds?
        True: "must be an RFC 3339 time",
        "10000-01-01T00:00:00Z": "",
        "soon": "",
    }
    for value, why in cases.items():
        message = await refused(admin, "POST", path, {"name": "k", "expiresAt": value}, "expiresAt")
        assert why in message, (value, message)
    assert await key_count(admin) == 0
    key = await admin.key(expiresAt="2035-12-30T02:00:00+02:00")  # 3650d from NOW
    assert key["expiresAt"] == "2035-12-30T00:00:00.000Z"


async def test_a_rate_limit_override_out_of_bounds_is_refused_on_create_and_patch(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}))
    admin = Admin(gw)
    await admin.org()
    key = await admin.key()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"requests": True, "per": "1m"}, "rateLimit.requests: must be a whole number"),
        ({"requests": "5", "per": "1m"}, "rateLimit.requests: must be a whole number"),
        ({"requests": 2.0, "per": "1m"}, "rateLimit.requests: must be a whole number"),
        ({"requests": 0, "per": "1m"}, "rateLimit.requests: must be >= 1"),
        ({"requests": 10**10, "per": "1m"}, "rateLimit.requests: must be <= 1000000000"),
        ({"requests": 1, "per": TOO_MANY_DIGITS}, "rateLimit.per: must be at most 365d"),
        ({"requests": 1, "per": "366d"}, "rateLimit.per: must be at most 365d (got '366d')"),
        ({"requests": 1, "per": "500ms"}, "rateLimit.per: must be at least 1s (got '500ms')"),
        ({"requests": 1, "per": True}, "rateLimit.per: must be a duration"),
        ({"requests": 1, "per": "1m", "burst": -1}, "rateLimit.burst: must be >= 0"),
        ({"requests": 1, "per": "1m", "burst": 10**10}, "rateLimit.burst: must be <= 1000000000"),
        ({"requests": 1, "per": "1d", "burst": 365}, "rateLimit.burst: 1 + 365 requests take 366d"),
    ]
    for limit, why in cases:
        body = {"name": "k", "rateLimit": limit}
        message = await refused(admin, "POST", "/admin/orgs/acme/keys", body, "rateLimit")
        assert message.startswith(why), (limit, message)
        patch = {"rateLimit": limit}
        message = await refused(admin, "PATCH", f"/admin/keys/{key['id']}", patch, "rateLimit")
        assert message.startswith(why), (limit, message)
    assert await key_count(admin) == 1
    _, shown = await admin.call("GET", f"/admin/keys/{key['id']}")
    assert shown["data"]["rateLimit"] is None
    at_bounds = {"requests": 1, "per": "365d", "burst": 0}
    status, body = await admin.call("PATCH", f"/admin/keys/{key['id']}", {"rateLimit": at_bounds})
    assert status == 200, body
    assert body["data"]["rateLimit"] == {"requests": 1, "per": 365 * DAY, "burst": 0}
    assert await me(gw, key["secret"]) == 200


async def test_a_webhook_secret_overlap_out_of_bounds_is_refused_on_both_apis(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}))
    admin = Admin(gw)
    await admin.org()
    secret = (await admin.key(scopes=["webhooks:write"]))["secret"]
    status, body = await admin.call(
        "POST", "/admin/orgs/acme/webhooks", {"url": closed_port_url(), "events": ["a.b"]}
    )
    assert status == 201, body
    endpoint = body["data"]
    path = f"/admin/webhooks/{endpoint['id']}/rotate"
    message = await refused(admin, "POST", path, {"overlap": "31d"}, "overlap")
    assert message == "overlap: must be at most 30d (got '31d')"
    for overlap in (TOO_MANY_DIGITS, 1e308, True, -1, "later", [1]):
        await refused(admin, "POST", path, {"overlap": overlap}, "overlap")
    async with gw.session.post(
        f"{gw.url}/v1/webhooks/{endpoint['id']}/rotate",
        json={"overlap": "99999999999d"},
        headers={"Authorization": f"Bearer {secret}"},
    ) as r:
        assert r.status == 400
        answer = await r.json()
    assert answer["error"]["code"] == "bad_request"
    assert answer["error"]["message"] == "overlap: must be at most 30d (got '99999999999d')"
    status, shown = await admin.call("GET", f"/admin/webhooks/{endpoint['id']}")
    assert status == 200
    assert shown["data"]["secretRotating"] is False


def _write_key_times(store: dict[str, Any], key_id: str, org_id: str, **times: float) -> None:
    """Overwrite a key's and its org's times in the store itself, as older versions could."""
    key_times = {k: v for k, v in times.items() if k != "org_created_at"}
    if store["backend"] == "local":
        db = sqlite3.connect(store["path"])
        try:
            (raw,) = db.execute("SELECT data FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            record = {**orjson.loads(raw), **key_times}
            db.execute("UPDATE api_keys SET data = ? WHERE id = ?", (orjson.dumps(record), key_id))
            (raw,) = db.execute("SELECT data FROM orgs WHERE id = ?", (org_id,)).fetchone()
            org = {**orjson.loads(raw), "created_at": times["org_created_at"]}
            db.execute("UPDATE orgs SET data = ? WHERE id = ?", (orjson.dumps(org), org_id))
            db.commit()
        finally:
            db.close()
        return
    client = raw_redis(store)
    try:
        names = Keyspace(store["key_prefix"])
        name = names.key(org_id, key_id)
        raw = client.get(name)
        assert raw is not None
        client.set(name, orjson.dumps({**orjson.loads(raw), **key_times}))
        name = names.org(org_id)
        raw = client.get(name)
        assert raw is not None
        client.set(name, orjson.dumps({**orjson.loads(raw), "created_at": times["org_created_at"]}))
    finally:
        client.close()


async def test_a_stored_time_beyond_year_9999_renders_clamped_instead_of_a_500(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], logs: LogLines
) -> None:
    gw = await gateway_factory(bounds_config(store_config))
    admin = Admin(gw)
    org = await admin.org()
    key = await admin.key()
    _write_key_times(
        store_config,
        key["id"],
        org["id"],
        expires_at=datetime.now(UTC).timestamp() + HUGE_GRACE,
        revoked_at=1e300,
        org_created_at=-1e20,
    )
    status, shown = await admin.call("GET", f"/admin/keys/{key['id']}")
    assert status == 200, shown
    assert shown["data"]["expiresAt"] == "9999-12-31T23:59:59.999Z"
    assert shown["data"]["revokedAt"] == "9999-12-31T23:59:59.999Z"
    status, listed = await admin.call("GET", "/admin/orgs/acme/keys")
    assert status == 200, listed
    assert [k["expiresAt"] for k in listed["data"]] == ["9999-12-31T23:59:59.999Z"]
    for path in ("/admin/orgs", "/admin/orgs/acme"):
        status, body = await admin.call("GET", path)
        assert status == 200, body
        assert "0001-01-01T00:00:00.000Z" in orjson.dumps(body).decode()
    assert logs.events("stored_time_out_of_range")
    # Its key can still be rotated (the replacement inherits the expiry) and revoked.
    status, body = await admin.call("POST", f"/admin/keys/{key['id']}/rotate", {"grace": "1h"})
    assert status == 201, body
    assert body["data"]["expiresAt"] == "9999-12-31T23:59:59.999Z"
    assert body["data"]["secret"].startswith("fw_live_")


def test_webhook_views_render_times_no_datetime_can_hold() -> None:
    endpoint = Endpoint(
        "wh_1", "org_1", "https://example.com", ("*",), (Secret("s", 1e300),), 1e300,
        updated_at=float("nan"),
    )  # fmt: skip
    view = endpoint_view(endpoint, NOW)
    assert (view["createdAt"], view["updatedAt"]) == ("9999-12-31T23:59:59.999Z", None)
    delivery = Delivery(
        "dlv_1", "wh_1", "org_1", "evt_1", "a.b", b"{}", -1e300, next_at=8.64e15,
        history=(Attempt(1, float("inf"), 0.1, 500, False),),
    )  # fmt: skip
    view = delivery_view(delivery, NOW)
    assert view["createdAt"] == "0001-01-01T00:00:00.000Z"
    assert view["nextAttemptAt"] == "9999-12-31T23:59:59.999Z"
    assert view["history"][0]["at"] == "9999-12-31T23:59:59.999Z"
    assert iso("soon") is None  # type: ignore[arg-type]
    assert iso(NOW) == "2026-01-01T00:00:00.000Z"


async def test_a_trailing_newline_makes_no_slug_scope_or_event_type(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}))
    admin = Admin(gw)
    body: dict[str, Any] = {"slug": "acme\n", "name": "Acme", "plan": "free"}
    await refused(admin, "POST", "/admin/orgs", body, "slug")
    await admin.org()
    await refused(
        admin, "POST", "/admin/orgs/acme/keys", {"name": "k", "scopes": ["read\n"]}, "scopes"
    )
    body = {"url": closed_port_url(), "events": ["a.b\n"]}
    await refused(admin, "POST", "/admin/orgs/acme/webhooks", body, "events")
    await refused(admin, "POST", "/admin/events", {"org": "acme", "type": "a.b\n"}, "type")
    _, orgs = await admin.call("GET", "/admin/orgs")
    assert [o["slug"] for o in orgs["data"]] == ["acme"]


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


async def test_event_data_nested_too_deep_to_send_is_a_400_not_a_500(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}))
    admin = Admin(gw)
    await admin.org()
    status, body = await admin.call(
        "POST", "/admin/orgs/acme/webhooks", {"url": closed_port_url(), "events": ["*"]}
    )
    assert status == 201, body
    for depth in (101, 300, 1000):
        # Written by hand: JSON encoders in Python stop well before 1000 levels.
        data = b"[" * depth + b"1" + b"]" * depth
        async with gw.session.post(
            f"{gw.admin_url}/admin/events",
            data=b'{"org": "acme", "type": "a.b", "data": ' + data + b"}",
            headers=ADMIN,
        ) as r:
            assert r.status == 400, depth
            answer = await r.json()
        assert answer["error"]["message"] == "data: must be nested at most 100 levels deep"
    status, body = await admin.call(
        "POST", "/admin/events", {"org": "acme", "type": "a.b", "data": _nested(100)}
    )
    assert status == 202, body


async def test_bodies_that_are_not_a_json_object_are_a_400(
    gateway_factory: GatewayFactory, tmp_path: Any
) -> None:
    gw = await gateway_factory(bounds_config({"path": str(tmp_path / "s.db")}))
    admin = Admin(gw)
    await admin.org()
    key = await admin.key()
    for raw in (b'{"grace": NaN}', b'{"grace": Infinity}', b'{"grace": 1e400}', b"\xff", b"[1]"):
        async with gw.session.post(
            f"{gw.admin_url}/admin/keys/{key['id']}/rotate",
            data=raw,
            headers={**ADMIN, "Content-Type": "application/json"},
        ) as r:
            assert r.status == 400, raw
            assert (await r.json())["error"]["code"] == "bad_request", raw
    assert await key_count(admin) == 1
