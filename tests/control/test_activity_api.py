"""The request log, usage and audit over the admin API and the data plane, on every store:
real requests through a real gateway, found again by their filters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from unittest.mock import ANY

import pytest

from tests.conftest import ADMIN_TOKEN, FakeClock, GatewayFactory, Upstream, make_config
from tests.helpers import Admin, eventually

PLANS = {
    "free": {"rate_limit": {"requests": 3, "per": "1m", "burst": 0}},
    "pro": {"rate_limit": {"requests": 1000, "per": "1m"}},
}


async def start(
    gateway_factory: GatewayFactory, upstream: Upstream, store: dict[str, Any], **extra: Any
) -> tuple[Any, Admin]:
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [
            {"path": "/v1/items", "upstream": "app", "auth": "key", "name": "items"},
            {"path": "/v1/other", "upstream": "app", "auth": "key", "name": "other"},
        ],
        store=store,
        plans=PLANS,
        request_log={"flush_interval": "20ms"},
        **extra,
    )
    gw = await gateway_factory(config)
    return gw, Admin(gw)


async def call(gw: Any, path: str, secret: str | None, **headers: str) -> int:
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    async with gw.session.get(f"{gw.url}{path}", headers=headers) as r:
        await r.read()
        return r.status


async def requests(admin: Admin, query: str = "") -> tuple[list[dict[str, Any]], Any]:
    status, body = await admin.call("GET", f"/admin/requests{query}")
    assert status == 200, body
    return body["data"], body["meta"]["next_cursor"]


async def test_every_request_is_logged_and_found_by_each_filter(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="free")
    await admin.org("globex", plan="pro")
    acme = await admin.key("acme")
    globex = await admin.key("globex")
    began = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    statuses = [await call(gw, "/v1/items?token=hush", acme["secret"], **{"User-Agent": "t/1"})]
    statuses += [await call(gw, "/v1/items", acme["secret"]) for _ in range(3)]  # 429 at last
    statuses += [await call(gw, "/v1/other", globex["secret"])]
    statuses += [await call(gw, "/v1/nowhere", None), await call(gw, "/v1/items", "fw_live_bad")]
    assert statuses == [200, 200, 200, 429, 200, 404, 401]
    entries = await eventually(lambda: logged(admin, 7))
    newest = entries[0]
    assert [e["status"] for e in entries] == list(reversed(statuses))
    first = entries[-1]
    assert first["path"] == "/v1/items"  # never the query
    assert first["orgId"] == acme["orgId"]
    assert first["keyId"] == acme["id"]
    assert first["route"] == "items"
    assert first["method"] == "GET"
    assert first["userAgent"] == "t/1"
    assert first["clientIp"] == "127.0.0.1"
    assert first["upstream"] == upstream.url
    assert first["upstreamMs"] is not None
    assert first["rateLimited"] is False
    assert entries[3]["rateLimited"] is True
    assert newest["orgId"] is None
    assert newest["keyId"] is None
    assert newest["status"] == 401
    assert entries[1]["route"] is None  # unmatched

    async def statuses_of(query: str) -> list[int]:
        return [e["status"] for e in (await requests(admin, query))[0]]

    assert await statuses_of("?org=acme") == [429, 200, 200, 200]
    assert await statuses_of(f"?org={acme['orgId']}&status=429") == [429]
    assert await statuses_of(f"?key={globex['id']}") == [200]
    assert await statuses_of("?route=other") == [200]
    assert await statuses_of("?status=4xx") == [401, 404, 429]
    assert await statuses_of(f"?since={began}&status=2xx&org=acme") == [200, 200, 200]
    assert await statuses_of("?until=2000-01-01T00:00:00Z") == []
    # Newest first, page by page, each entry once.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await requests(admin, "?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        seen += [e["requestId"] for e in page]
        if cursor is None:
            break
    assert seen == [e["requestId"] for e in entries]
    # SECURITY: no secret anywhere in what the log keeps.
    _status, raw = await admin.call("GET", "/admin/requests?limit=1000")
    text = repr(raw)
    for secret in (acme["secret"], globex["secret"], "hush", ADMIN_TOKEN):
        assert secret not in text


async def logged(admin: Admin, count: int) -> list[dict[str, Any]] | None:
    """The request log once it holds count entries."""
    entries, _ = await requests(admin)
    assert len(entries) <= count, entries
    return entries if len(entries) == count else None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?status=600", "status:"),
        ("?status=4x", "status:"),
        ("?since=yesterday", "since:"),
        ("?since=2027-01-01T00:00:00", "since:"),
        ("?since=2027-01-02T00:00:00Z&until=2027-01-01T00:00:00Z", "until:"),
        ("?limit=0", "limit:"),
        ("?limit=1001", "limit:"),
        ("?cursor=garbage", "cursor:"),
        ("?orgg=acme", "orgg:"),
        ("?org=a&org=b", "org:"),
    ],
)
async def test_a_bad_query_is_a_400_naming_the_parameter(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Any, query: str, message: str
) -> None:
    _gw, admin = await start(gateway_factory, upstream, {"path": str(tmp_path / "s.db")})
    status, body = await admin.call("GET", f"/admin/requests{query}")
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["message"].startswith(message), body


async def test_an_unknown_org_is_a_404(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Any
) -> None:
    _gw, admin = await start(gateway_factory, upstream, {"path": str(tmp_path / "s.db")})
    for path in ("/admin/requests?org=nope", "/admin/usage?org=nope", "/admin/audit?org=nope"):
        status, body = await admin.call("GET", path)
        assert (status, body["error"]["code"]) == (404, "not_found")


async def test_usage_counts_requests_errors_and_429s_per_org_and_key(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    org = await admin.org("acme", plan="free")
    key = await admin.key("acme")
    other = await admin.key("acme")
    for secret in [key["secret"]] * 4 + [other["secret"]]:
        await call(gw, "/v1/items", secret)
    await call(gw, "/v1/nowhere", key["secret"])  # a 404 before auth: no org

    async def usage(query: str) -> list[dict[str, Any]]:
        status, body = await admin.call("GET", f"/admin/usage{query}")
        assert status == 200, body
        return [b for b in body["data"] if b["requests"]]

    async def counted(query: str, total: int) -> list[dict[str, Any]] | None:
        found = await usage(query)
        return found if sum(b["requests"] for b in found) == total else None

    buckets = await eventually(lambda: counted("?org=acme", 5))
    assert len(buckets) in (1, 2)  # the calls may straddle a minute
    total = {k: sum(b[k] for b in buckets) for k in ("requests", "errors", "rateLimited")}
    assert total == {"requests": 5, "errors": 0, "rateLimited": 1}
    by_key = await usage(f"?key={key['id']}")
    assert sum(b["requests"] for b in by_key) == 4
    assert sum(b["rateLimited"] for b in by_key) == 1
    hours = await usage("?org=acme&bucket=hour")
    assert sum(b["requests"] for b in hours) == 5
    everything = await eventually(lambda: counted("", 6))
    assert sum(b["errors"] for b in everything) == 1
    status, body = await admin.call("GET", "/admin/usage?org=acme")
    assert body["meta"]["bucket"] == "minute"
    assert body["meta"]["limits"]["plan"] == "free"
    assert body["meta"]["limits"]["rateLimit"]["requests"] == 3
    # Where the limit stands now, read without counting: the key used up its 3 a minute.
    status, body = await admin.call("GET", f"/admin/usage?key={key['id']}")
    (state,) = body["meta"]["limits"]["state"]
    assert (state["policy"], state["limit"], state["remaining"]) == ("key", 3, 0)
    status, body = await admin.call("GET", f"/admin/usage?key={key['id']}")
    assert body["meta"]["limits"]["state"] == [state | {"resetSeconds": ANY}]
    assert len(body["data"]) == 60  # the last hour, through the minute now running, zeros too
    assert org["id"]
    for since in ("2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"):  # too many buckets; ahead
        status, body = await admin.call("GET", f"/admin/usage?since={since}")
        assert (status, body["error"]["message"][:6]) == (400, "since:"), body


async def test_the_audit_log_records_who_did_what_before_and_after(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    _gw, admin = await start(gateway_factory, upstream, store_config)
    org = await admin.org("acme")
    key = await admin.key("acme", scopes=["contacts:read"])
    await admin.data("PATCH", f"/admin/keys/{key['id']}", {"name": "renamed"})
    rotated = await admin.data("POST", f"/admin/keys/{key['id']}/rotate", {"grace": "1h"})
    await admin.data("POST", f"/admin/keys/{rotated['id']}/revoke")
    await admin.data("PATCH", "/admin/orgs/acme", {"name": "Acme Two"})
    status, body = await admin.call("POST", "/admin/reload")
    status, body = await admin.call("GET", "/admin/audit")
    assert status == 200, body
    entries = body["data"]
    assert [e["action"] for e in entries] == [
        "config.reload",
        "org.update",
        "key.revoke",
        "key.rotate",
        "key.update",
        "key.create",
        "org.create",
    ]
    assert {e["actor"] for e in entries} == {"admin"}
    created = entries[-2]
    assert created["target"] == key["id"]
    assert created["orgId"] == org["id"]
    assert created["before"] is None
    assert created["after"]["name"] == "k"
    updated = entries[-3]
    assert (updated["before"]["name"], updated["after"]["name"]) == ("k", "renamed")
    assert entries[1]["before"]["name"] == "Acme"
    assert entries[1]["after"]["name"] == "Acme Two"
    assert entries[2]["after"]["revokedAt"] is not None
    assert entries[3]["after"]["new"]["id"] == rotated["id"]
    # SECURITY: the secrets the create and rotate answers carried are in no entry.
    assert key["secret"] not in repr(entries)
    assert rotated["secret"] not in repr(entries)
    assert "secret" not in repr(entries)
    # Filters and pages.
    status, body = await admin.call("GET", "/admin/audit?action=key.create&org=acme")
    assert [e["target"] for e in body["data"]] == [key["id"]]
    status, body = await admin.call("GET", "/admin/audit?limit=3")
    assert len(body["data"]) == 3
    assert body["meta"]["next_cursor"]
    cursor = body["meta"]["next_cursor"]
    status, body = await admin.call("GET", f"/admin/audit?limit=10&cursor={cursor}")
    assert [e["action"] for e in body["data"]] == [e["action"] for e in entries[3:]]
    # Append-only: nothing but GET.
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        status, body = await admin.call(method, "/admin/audit")
        assert status == 405, (method, body)


async def test_keys_with_the_scope_read_their_own_orgs_log_on_the_data_plane(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    await admin.org("globex", plan="pro")
    reader = await admin.key("acme", scopes=["logs:read"])
    plain = await admin.key("acme")
    stranger = await admin.key("globex")
    await call(gw, "/v1/items", plain["secret"])
    await call(gw, "/v1/items", stranger["secret"])

    async def own_log() -> list[dict[str, Any]]:
        async with gw.session.get(
            f"{gw.url}/v1/requests?route=items",
            headers={"Authorization": f"Bearer {reader['secret']}"},
        ) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert body["meta"]["request_id"] == r.headers["X-Request-Id"]
            return list(body["data"])

    entries = await eventually(own_log)
    assert [e["keyId"] for e in entries] == [plain["id"]]  # never globex's
    assert entries[0]["upstream"] is None  # the backends' addresses are not the clients' business
    assert await call(gw, "/v1/requests", plain["secret"]) == 403  # no logs:read
    async with gw.session.get(
        f"{gw.url}/v1/requests?org=globex", headers={"Authorization": f"Bearer {reader['secret']}"}
    ) as r:
        assert r.status == 400  # the org is the caller's: no parameter to widen it


async def test_the_configured_max_age_is_applied_by_the_gateway(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock()
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/v1/items", "upstream": "app", "auth": "key", "name": "items"}],
        store=store_config,
        plans=PLANS,
        request_log={"flush_interval": "20ms", "max_age": "1m"},
    )
    gw = await gateway_factory(config, clock=clock)
    admin = Admin(gw)
    await admin.org("acme", plan="pro")
    key = await admin.key("acme")
    for _ in range(5):
        await call(gw, "/v1/items", key["secret"])
    await eventually(lambda: logged(admin, 5))
    clock.now += 120  # the recorder's next retention pass finds them all past 1m

    async def emptied() -> bool:
        return (await requests(admin))[0] == []

    await eventually(emptied)


async def test_with_the_request_log_off_nothing_is_kept(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Any
) -> None:
    gw, admin = await start(gateway_factory, upstream, {"path": str(tmp_path / "s.db")})
    await admin.org("acme", plan="pro")
    key = await admin.key("acme")
    await call(gw, "/v1/items", key["secret"])
    await eventually(lambda: logged(admin, 1))
    config = {**gw.process.loaded.config.request_log.model_dump(), "enabled": False}
    assert gw.process.recorder is not None
    gw.process.recorder.configure(
        type(gw.process.loaded.config.request_log).model_validate(config),
        gw.process.loaded.config.audit,
    )
    await call(gw, "/v1/items", key["secret"])
    await asyncio.sleep(0.2)  # ten flush intervals: nothing comes
    assert len((await requests(admin))[0]) == 1


async def test_webhook_changes_are_audited_without_their_secrets(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Any
) -> None:
    _gw, admin = await start(
        gateway_factory,
        upstream,
        {"path": str(tmp_path / "s.db")},
        webhooks={"allow_private_targets": True},
    )
    org = await admin.org("acme")
    created = await admin.data(
        "POST", "/admin/orgs/acme/webhooks", {"url": upstream.url, "events": ["a.b"]}
    )
    await admin.data("PATCH", f"/admin/webhooks/{created['id']}", {"description": "billing"})
    rotated = await admin.data("POST", f"/admin/webhooks/{created['id']}/rotate", {})
    await admin.data("DELETE", f"/admin/webhooks/{created['id']}")
    status, body = await admin.call("GET", "/admin/audit?org=acme")
    assert status == 200, body
    entries = body["data"]
    assert [e["action"] for e in entries] == [
        "webhook.delete",
        "webhook.rotate",
        "webhook.update",
        "webhook.create",
        "org.create",
    ]
    assert all(e["target"] == created["id"] for e in entries[:4])
    assert all(e["orgId"] == org["id"] for e in entries)
    update = entries[2]
    assert (update["before"]["description"], update["after"]["description"]) == ("", "billing")
    text = repr(entries)
    assert created["secret"] not in text
    assert rotated["secret"] not in text


async def test_a_keys_own_webhook_changes_are_audited_with_the_key_as_actor(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Any
) -> None:
    gw, admin = await start(
        gateway_factory,
        upstream,
        {"path": str(tmp_path / "s.db")},
        webhooks={"allow_private_targets": True},
    )
    await admin.org("acme", plan="pro")
    key = await admin.key("acme", scopes=["webhooks:write"])
    auth = {"Authorization": f"Bearer {key['secret']}"}
    body = {"url": upstream.url, "events": ["a.b"]}
    async with gw.session.post(f"{gw.url}/v1/webhooks", json=body, headers=auth) as r:
        assert r.status == 201, await r.text()
        endpoint = (await r.json())["data"]
    async with gw.session.post(f"{gw.url}/v1/webhooks/{endpoint['id']}/ping", headers=auth) as r:
        assert r.status == 202
    async with gw.session.delete(f"{gw.url}/v1/webhooks/{endpoint['id']}", headers=auth) as r:
        assert r.status == 200
    _status, body = await admin.call("GET", "/admin/audit?org=acme")
    entries = [(e["actor"], e["action"], e["target"]) for e in body["data"]]
    assert entries[:3] == [
        (f"key:{key['id']}", "webhook.delete", endpoint["id"]),
        (f"key:{key['id']}", "webhook.ping", endpoint["id"]),
        (f"key:{key['id']}", "webhook.create", endpoint["id"]),
    ]
    assert body["data"][0]["before"]["url"] == upstream.url
    assert endpoint["secret"] not in repr(body)
