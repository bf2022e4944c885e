"""Self-service keys (keys.self_service) and the limits a key is shown, through a real gateway on
every store: a key with keys:write manages its own org's keys but never makes or renews one more
powerful than itself; plans with key_ttl bound every key's life; config errors name the field."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from gateway.api.views import iso
from gateway.config import parse_config
from tests.config.test_config import problems
from tests.conftest import (
    ADMIN_TOKEN,
    FakeClock,
    GatewayFactory,
    RunningGateway,
    Upstream,
    make_config,
    parse_response,
    read_one_response,
)
from tests.helpers import Admin, eventually

PATH = "/api/keys"
DAY = 86400.0
PRO = {
    "rate_limit": {"requests": 120, "per": "1m"},
    "org_rate_limit": {"requests": 600, "per": "1h"},
    "quota": {"requests": 1000, "per": "month"},
    "webhook_endpoints": 3,
}
PLANS = {"pro": PRO, "bare": {}, "ttl": {"key_ttl": "30d"}}
PRO_LIMITS = {
    "requestsPerMinute": 120,
    "burst": 0,
    "orgRequestsPerMinute": 10,
    "quota": 1000,
    "quotaPeriod": "month",
    "webhookEndpoints": 3,
}


async def start(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    store: dict[str, Any],
    clock: FakeClock | None = None,
    **extra: Any,
) -> tuple[RunningGateway, Admin]:
    """A gateway with one keyed route (/v1/items) and self-service keys at PATH."""
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/v1/items", "upstream": "app", "auth": "key"}],
        store=store,
        plans=PLANS,
        webhooks={"allow_private_targets": True},
        **{"keys": {"self_service": {"path": PATH, "scope": "keys:write"}}, **extra},
    )
    gw = await gateway_factory(config, clock=clock)
    return gw, Admin(gw)


async def api(
    gw: RunningGateway, secret: str, method: str, path: str = PATH, body: Any = None
) -> tuple[int, Any]:
    """Status and JSON answer of a data-plane call made with ``secret`` (bytes: sent as is)."""
    headers = {"Authorization": f"Bearer {secret}"}
    sent = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with gw.session.request(method, f"{gw.url}{path}", headers=headers, **sent) as r:
        return r.status, await r.json(content_type=None)


async def ok(
    gw: RunningGateway,
    secret: str,
    method: str,
    path: str = PATH,
    body: Any = None,
    status: int = 200,
) -> Any:
    """The data of a call that must answer ``status``."""
    got, answer = await api(gw, secret, method, path, body)
    assert got == status, answer
    return answer["data"]


async def refused(
    gw: RunningGateway,
    secret: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    text: str,
) -> str:
    """The error message of a call that must be refused with ``status``, holding ``text``."""
    got, answer = await api(gw, secret, method, path, body)
    assert got == status, (method, path, body, answer)
    message: str = answer["error"]["message"]
    assert text in message, (body, message)
    return message


async def works(gw: RunningGateway, secret: str) -> int:
    """The status the keyed route answers this key."""
    async with gw.session.get(
        f"{gw.url}/v1/items", headers={"Authorization": f"Bearer {secret}"}
    ) as r:
        await r.read()
        return r.status


async def test_a_key_lists_creates_reads_renames_rotates_and_revokes_its_orgs_keys(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    maker = await admin.key("acme", scopes=["keys:write", "items:read"])
    s = maker["secret"]
    assert [k["id"] for k in await ok(gw, s, "GET")] == [maker["id"]]
    made = await ok(gw, s, "POST", PATH, {"name": "ci", "scopes": ["items:read"]}, 201)
    assert (made["orgId"], made["scopes"], made["environment"]) == (
        maker["orgId"],
        ["items:read"],
        "live",
    )
    assert made["secret"]
    assert await works(gw, made["secret"]) == 200
    one = f"{PATH}/{made['id']}"
    got = await ok(gw, s, "GET", one)
    assert (got["id"], got["name"]) == (made["id"], "ci")
    listed = await ok(gw, s, "GET")
    assert {k["id"] for k in listed} == {maker["id"], made["id"]}
    renamed = await ok(gw, s, "PATCH", one, {"name": "ci-2"})
    assert renamed["name"] == (await admin.data("GET", f"/admin/keys/{made['id']}"))["name"]
    assert renamed["name"] == "ci-2"
    # A rotation with grace: the old secret and the new one both work for the grace.
    new = await ok(gw, s, "POST", f"{one}/rotate", {"grace": "1h"}, 201)
    assert new["id"] != made["id"]
    assert new["secret"] not in (made["secret"], None)
    assert (new["name"], new["scopes"]) == ("ci-2", ["items:read"])
    assert [await works(gw, made["secret"]), await works(gw, new["secret"])] == [200, 200]
    old = await ok(gw, s, "GET", one)
    assert old["rotatedTo"] == new["id"]
    assert old["expiresAt"] is not None
    # SECURITY: a secret is in the answer that made it, and nowhere else.
    for view in (got, *listed, renamed, old, *await ok(gw, s, "GET")):
        assert "secret" not in view, view
    revoked = await ok(gw, s, "POST", f"{PATH}/{new['id']}/revoke")
    assert revoked["revokedAt"] is not None
    assert "secret" not in revoked
    assert await works(gw, new["secret"]) == 401
    deleted = await ok(gw, s, "DELETE", one)  # DELETE revokes too
    assert deleted["revokedAt"] is not None
    assert await works(gw, made["secret"]) == 401
    # A key may revoke itself; its very next request is unauthorized.
    assert (await ok(gw, s, "DELETE", f"{PATH}/{maker['id']}"))["revokedAt"] is not None
    assert (await api(gw, s, "GET"))[0] == 401


async def test_a_key_grants_only_scopes_it_holds_itself_wildcards_and_implications_included(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(
        gateway_factory, upstream, store_config, scopes={"implies": {"admin": ["write"]}}
    )
    await admin.org("acme", plan="pro")

    async def holder(*scopes: str) -> str:
        return str((await admin.key("acme", scopes=["keys:write", *scopes]))["secret"])

    wide, narrow, boss, star = (
        await holder("contacts:*"),
        await holder("contacts:read"),
        await holder("admin"),
        await holder("*"),
    )
    granted = [
        (wide, ["contacts:read", "contacts:export:csv"]),
        (wide, ["contacts:*", "keys:write"]),
        (boss, ["write"]),  # implied by admin
        (boss, ["admin"]),
        (star, ["*"]),
        (star, ["billing:read"]),
    ]
    for secret, scopes in granted:
        made = await ok(gw, secret, "POST", PATH, {"name": "n", "scopes": scopes}, 201)
        assert made["scopes"] == scopes
    before = len(await admin.data("GET", "/admin/orgs/acme/keys"))
    escalations = [
        (wide, ["*"], "*"),
        (wide, ["contacts:read", "billing:read"], "billing:read"),
        (narrow, ["contacts:*"], "contacts:*"),
        (narrow, ["contacts:write"], "contacts:write"),
        (boss, ["read"], "read"),  # admin implies write, not read
    ]
    for secret, scopes, missing in escalations:
        async with gw.session.post(
            f"{gw.url}{PATH}",
            json={"name": "n", "scopes": scopes},
            headers={"Authorization": f"Bearer {secret}"},
        ) as r:
            answer = await r.json()
            assert (r.status, answer["error"]["code"]) == (403, "insufficient_scope"), answer
            assert f'scope="{missing}"' in r.headers["WWW-Authenticate"]
    assert len(await admin.data("GET", "/admin/orgs/acme/keys")) == before
    # Rotating hands out a new secret: only for a key the caller could have made.
    target = await admin.key("acme", scopes=["contacts:*"])
    await refused(gw, narrow, "POST", f"{PATH}/{target['id']}/rotate", {}, 403, "contacts:*")
    untouched = await admin.data("GET", f"/admin/keys/{target['id']}")
    assert (untouched["rotatedTo"], untouched["expiresAt"]) == (None, None)
    assert await works(gw, target["secret"]) == 200
    await ok(gw, wide, "POST", f"{PATH}/{target['id']}/rotate", {}, 201)
    # Without the endpoint's scope, nothing at all.
    reader = await admin.key("acme", scopes=["contacts:read"])
    for method, path in (("GET", PATH), ("POST", PATH), ("GET", f"{PATH}/{target['id']}")):
        status, answer = await api(gw, reader["secret"], method, path, {"name": "n"})
        assert (status, answer["error"]["code"]) == (403, "insufficient_scope"), answer


async def test_a_made_key_stays_within_its_makers_environment_addresses_and_expiry(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock()
    gw, admin = await start(gateway_factory, upstream, store_config, clock)
    await admin.org("acme", plan="pro")
    tester = (await admin.key("acme", scopes=["keys:write"], environment="test"))["secret"]
    for body in ({"name": "n"}, {"name": "n", "environment": "live"}):
        await refused(gw, tester, "POST", PATH, body, 400, "environment: a test key makes test")
    made = await ok(gw, tester, "POST", PATH, {"name": "n", "environment": "test"}, 201)
    assert made["environment"] == "test"
    assert "test" in made["secret"]
    ends = iso(clock.now + 10 * DAY)
    bound = await admin.key(
        "acme",
        scopes=["keys:write"],
        allowedIps=["127.0.0.0/8"],
        expiresAt=ends,
        attributes={"role": "sales"},
    )
    s = bound["secret"]
    # Asking for nothing: the maker's addresses, expiry and attributes.
    child = await ok(gw, s, "POST", PATH, {"name": "child"}, 201)
    assert (child["allowedIps"], child["expiresAt"], child["attributes"]) == (
        ["127.0.0.0/8"],
        ends,
        {"role": "sales"},
    )
    assert await works(gw, child["secret"]) == 200
    sooner = iso(clock.now + DAY)
    body = {"name": "n", "allowedIps": ["127.0.0.1"], "expiresAt": sooner}
    within = await ok(gw, s, "POST", PATH, body, 201)
    assert (within["allowedIps"], within["expiresAt"]) == (["127.0.0.1/32"], sooner)
    for ips in (["10.0.0.0/8"], ["0.0.0.0/0"], ["127.0.0.1", "192.168.1.1"], ["::1"]):
        await refused(gw, s, "POST", PATH, {"name": "n", "allowedIps": ips}, 400, "allowedIps:")
    later = {"name": "n", "expiresAt": iso(clock.now + 11 * DAY)}
    await refused(gw, s, "POST", PATH, later, 400, "expiresAt:")
    # A key's rate limit and attributes are an admin's to set, on create and on update.
    admin_only: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", PATH, {"name": "n", "rateLimit": {"requests": 5, "per": "1s"}}),
        ("POST", PATH, {"name": "n", "attributes": {"role": "admin"}}),
        ("PATCH", f"{PATH}/{child['id']}", {"rateLimit": {"requests": 5, "per": "1s"}}),
        ("PATCH", f"{PATH}/{child['id']}", {"rateLimit": None}),
        ("PATCH", f"{PATH}/{child['id']}", {"attributes": {}}),
    ]
    for method, path, body in admin_only:
        message = await refused(gw, s, method, path, body, 400, "set by an admin")
        assert message.split(":")[0] in body
    # A key bound to addresses renews only keys bound within them.
    anywhere = await admin.key("acme")
    await refused(gw, s, "POST", f"{PATH}/{anywhere['id']}/rotate", {}, 400, "allowedIps:")
    # The maker's expiry is the made key's too.
    clock.now += 10 * DAY + 1
    assert [await works(gw, child["secret"]), await works(gw, s)] == [401, 401]


async def test_a_key_that_expires_renews_a_key_only_up_to_its_own_expiry(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A key could not make a key that never expires: rotating one, it gets a secret that
    expires when the caller does, while the old key keeps its own life for the grace."""
    clock = FakeClock()
    gw, admin = await start(gateway_factory, upstream, store_config, clock)
    await admin.org("acme", plan="pro")
    ends = iso(clock.now + DAY)
    maker = await admin.key("acme", scopes=["keys:write"], expiresAt=ends)
    forever = await admin.key("acme")
    path = f"{PATH}/{forever['id']}/rotate"
    renewed = await ok(gw, maker["secret"], "POST", path, {"grace": "2d"}, 201)
    assert renewed["expiresAt"] == ends, "a rotation outlived the key that made it"
    clock.now += DAY + 1
    assert [await works(gw, forever["secret"]), await works(gw, renewed["secret"])] == [200, 401]


async def test_another_orgs_keys_are_not_found_and_stay_untouched(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    await admin.org("globex", plan="pro")
    s = (await admin.key("acme", scopes=["*"]))["secret"]
    theirs = await admin.key("globex")
    calls = [("GET", "", None), ("PATCH", "", {"name": "x"}), ("DELETE", "", None)]
    calls += [("POST", "/rotate", {}), ("POST", "/revoke", None)]
    for key_id in (theirs["id"], "key_nonexistent"):
        for method, sub, body in calls:
            status, answer = await api(gw, s, method, f"{PATH}/{key_id}{sub}", body)
            assert (status, answer["error"]["code"]) == (404, "not_found"), (method, sub, answer)
    assert theirs["id"] not in {k["id"] for k in await ok(gw, s, "GET")}
    stored = await admin.data("GET", f"/admin/keys/{theirs['id']}")
    assert (stored["name"], stored["revokedAt"], stored["rotatedTo"]) == ("k", None, None)
    assert await works(gw, theirs["secret"]) == 200


async def test_bad_requests_get_a_clear_error_and_change_nothing(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    s = (await admin.key("acme", scopes=["*"]))["secret"]
    gone = await admin.key("acme")
    await admin.data("POST", f"/admin/keys/{gone['id']}/revoke")
    one = f"{PATH}/{gone['id']}"
    bad: list[tuple[str, str, Any, int, str]] = [
        ("POST", PATH, b"{nope", 400, "bad_request"),
        ("POST", PATH, [], 400, "bad_request"),
        ("POST", PATH, {"name": ""}, 400, "bad_request"),
        ("POST", PATH, {"name": "n", "scopes": ["bad scope"]}, 400, "bad_request"),
        ("POST", PATH, {"name": "n", "allowedIps": ["not-an-ip"]}, 400, "bad_request"),
        ("POST", PATH, {"name": "n", "expiresAt": "2001-01-01T00:00:00Z"}, 400, "bad_request"),
        ("POST", PATH, {"name": "n", "bogus": 1}, 400, "bad_request"),
        ("PATCH", one, {"name": 5}, 400, "bad_request"),
        ("POST", f"{one}/rotate", {"grace": "forever"}, 400, "bad_request"),
        ("POST", f"{one}/rotate", {}, 409, "conflict"),  # a revoked key is not renewed
        ("PUT", PATH, None, 405, "method_not_allowed"),
        ("GET", f"{one}/rotate", None, 405, "method_not_allowed"),
        ("GET", f"{one}/rotate/again", None, 404, "route_not_found"),
    ]
    for method, path, body, status, code in bad:
        got, answer = await api(gw, s, method, path, body)
        assert (got, answer["error"]["code"]) == (status, code), (method, path, body, answer)
    assert len(await admin.data("GET", "/admin/orgs/acme/keys")) == 2


async def test_a_keys_changes_are_audited_with_the_key_as_actor_and_fire_key_events(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    events = ["key.created", "key.rotated", "key.revoked"]
    endpoint = await admin.data(
        "POST", "/admin/orgs/acme/webhooks", {"url": upstream.url, "events": events}
    )
    maker = await admin.key("acme", scopes=["keys:write"])
    made = await ok(gw, maker["secret"], "POST", PATH, {"name": "m"}, 201)
    new = await ok(gw, maker["secret"], "POST", f"{PATH}/{made['id']}/rotate", {}, 201)
    await ok(gw, maker["secret"], "DELETE", f"{PATH}/{new['id']}")
    _status, body = await admin.call("GET", "/admin/audit?org=acme")
    actor = f"key:{maker['id']}"
    by_key = [(e["actor"], e["action"], e["target"]) for e in body["data"] if e["actor"] == actor]
    assert by_key == [
        (actor, "key.revoke", new["id"]),
        (actor, "key.rotate", made["id"]),
        (actor, "key.create", made["id"]),
    ]
    for secret in (maker["secret"], made["secret"], new["secret"]):
        assert secret not in repr(body)

    async def sent() -> list[str]:
        found = await admin.data("GET", f"/admin/webhooks/{endpoint['id']}/deliveries")
        return sorted(d["eventType"] for d in found)

    # The admin's key, then the key's three changes.
    expected = ["key.created", "key.created", "key.revoked", "key.rotated"]
    await eventually(sent, expect=expected)


async def test_key_ttl_bounds_admin_made_keys_and_a_rotation_renews_them(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock()
    gw, admin = await start(gateway_factory, upstream, store_config, clock)
    await admin.org("acme", plan="ttl")
    key = await admin.key("acme")
    assert key["expiresAt"] == iso(clock.now + 30 * DAY)
    too_late = {"name": "k", "expiresAt": iso(clock.now + 30 * DAY + 60)}
    status, answer = await admin.call("POST", "/admin/orgs/acme/keys", too_late)
    assert (status, answer["error"]["message"].split(":")[0]) == (400, "expiresAt"), answer
    sooner = await admin.key("acme", expiresAt=iso(clock.now + DAY))
    assert sooner["expiresAt"] == iso(clock.now + DAY)
    clock.now += 20 * DAY
    rotate = f"/admin/keys/{key['id']}/rotate"
    renewed = await admin.data("POST", rotate, {"grace": "1h"})
    assert renewed["expiresAt"] == iso(clock.now + 30 * DAY)
    assert [await works(gw, key["secret"]), await works(gw, renewed["secret"])] == [200, 200]
    clock.now += 3600 + 1
    assert [await works(gw, key["secret"]), await works(gw, renewed["secret"])] == [401, 200]
    clock.now += 30 * DAY
    assert await works(gw, renewed["secret"]) == 401
    # Without key_ttl a rotation keeps the old key's expiry, or its lack of one.
    await admin.org("globex", plan="pro")
    for expires in (iso(clock.now + 5 * DAY), None):
        old = await admin.key("globex", expiresAt=expires)
        new = await admin.data("POST", f"/admin/keys/{old['id']}/rotate", {})
        assert new["expiresAt"] == old["expiresAt"] == expires


async def test_key_ttl_bounds_self_made_keys_and_a_rotation_renews_up_to_the_makers_expiry(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """On a key_ttl plan a key makes keys expiring with it at the latest, and a rotation it makes
    gives a fresh lifetime cut at its own expiry: no key renews itself for ever."""
    clock = FakeClock()
    gw, admin = await start(gateway_factory, upstream, store_config, clock)
    await admin.org("acme", plan="ttl")
    maker = await admin.key("acme", scopes=["keys:write"])
    s = maker["secret"]
    short = await admin.key("acme", expiresAt=iso(clock.now + 2 * DAY))
    clock.now += 1 * DAY
    made = await ok(gw, s, "POST", PATH, {"name": "m"}, 201)
    assert made["expiresAt"] == maker["expiresAt"] == iso(clock.now + 29 * DAY)
    capped = {"name": "m", "expiresAt": iso(clock.now + 31 * DAY)}
    await refused(gw, s, "POST", PATH, capped, 400, "expiresAt:")
    sooner = await ok(gw, s, "POST", PATH, {"name": "m", "expiresAt": iso(clock.now + DAY)}, 201)
    assert sooner["expiresAt"] == iso(clock.now + DAY)
    # A key due in a day is renewed, up to the maker's own expiry.
    renewed = await ok(gw, s, "POST", f"{PATH}/{short['id']}/rotate", {}, 201)
    assert renewed["expiresAt"] == maker["expiresAt"]
    itself = await ok(gw, s, "POST", f"{PATH}/{maker['id']}/rotate", {}, 201)
    assert itself["expiresAt"] == maker["expiresAt"]
    assert [await works(gw, s), await works(gw, itself["secret"])] == [401, 200]
    # An admin's rotation renews the maker for a whole key_ttl.
    clock.now += 20 * DAY
    fresh = await admin.data("POST", f"/admin/keys/{itself['id']}/rotate", {})
    assert fresh["expiresAt"] == iso(clock.now + 30 * DAY)
    clock.now += 9 * DAY + 1  # past the maker's first expiry
    statuses = [await works(gw, k["secret"]) for k in (renewed, made, fresh)]
    assert statuses == [401, 401, 200]
    clock.now += 30 * DAY
    assert await works(gw, fresh["secret"]) == 401


async def test_every_answer_shows_the_callers_limits_from_its_plan_and_its_own_override(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    await admin.org("bare", plan="bare")
    scopes = ["keys:write", "webhooks:write"]
    key = await admin.key("acme", scopes=scopes)
    s = key["secret"]
    hook = {"url": upstream.url, "events": ["a.b"]}

    async def limits(secret: str) -> list[Any]:
        """The limits of an answer of each of the endpoints: keys and webhooks, read and made."""
        shown = []
        for method, path, body, status in (
            ("GET", PATH, None, 200),
            ("POST", PATH, {"name": "n"}, 201),
            ("GET", "/v1/webhooks", None, 200),
            ("POST", "/v1/webhooks", hook, 201),
        ):
            got, answer = await api(gw, secret, method, path, body)
            assert got == status, answer
            shown.append(answer["limits"])
        return shown

    assert await limits(s) == [PRO_LIMITS] * 4
    async with gw.session.get(f"{gw.url}{PATH}", headers={"Authorization": f"Bearer {s}"}) as r:
        assert r.headers["Cache-Control"] == "no-store"
    # The key's own limit, scaled to a minute: whole when it is.
    for override, per_minute in (
        ({"requests": 30, "per": "30s"}, 60),
        ({"requests": 90, "per": "1h"}, 1.5),
    ):
        await admin.data("PATCH", f"/admin/keys/{key['id']}", {"rateLimit": override})
        shown = (await api(gw, s, "GET"))[1]["limits"]
        assert shown == {**PRO_LIMITS, "requestsPerMinute": per_minute}, override
    # A plan with no limits promises none.
    bare = await admin.key("bare", scopes=scopes)
    assert await limits(bare["secret"]) == [dict.fromkeys(PRO_LIMITS)] * 4


def self_service_problems(section: dict[str, Any], **extra: Any) -> list[str]:
    config = {
        "upstreams": {"app": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [],
        "keys": {"self_service": section},
        **extra,
    }
    return problems(yaml.safe_dump(config))


def test_a_self_service_path_overlapping_another_or_not_literal_is_a_config_error() -> None:
    api_keys = {"path": PATH}
    for path in ("/api/keys", "/api/keys/{id}"):
        route = {"path": path, "upstream": "app"}
        assert self_service_problems(api_keys, routes=[route]) == [
            f"routes: routes[0] path {path} is under keys.self_service.path (/api/keys);"
            " move one of them or set keys.self_service: null"
        ]
    overlaps = [
        ({"path": "/v1/webhooks"}, {}, "overlaps webhooks.api_path (/v1/webhooks)"),
        ({"path": "/v1/webhooks/k"}, {}, "overlaps webhooks.api_path (/v1/webhooks)"),
        (
            {"path": "/hooks"},
            {"webhooks": {"api_path": "/hooks/x"}},
            "overlaps webhooks.api_path (/hooks/x)",
        ),
        (
            {"path": "/logs"},
            {"request_log": {"api_path": "/logs"}},
            "overlaps request_log.api_path (/logs)",
        ),
        ({"path": "/v1/me"}, {}, "overlaps identity.path (/v1/me)"),
        (api_keys, {"identity": {"path": "/api/keys/me"}}, "overlaps identity.path (/api/keys/me)"),
    ]
    for section, extra, text in overlaps:
        (problem,) = self_service_problems(section, **extra)
        assert f"keys.self_service.path: {section['path']} {text}" in problem, problem
    for path in ("/api/{x}", "/api/keys/", "api/keys"):
        (problem,) = self_service_problems({"path": path})
        assert problem.startswith("keys.self_service.path: must "), problem
    assert self_service_problems({"path": PATH, "scope": "bad scope"}) == [
        "keys.self_service.scope: not a scope: 'bad scope'"
        " (use names like read, contacts:read or contacts:*)"
    ]
    # Beside, not under: a route sharing a prefix, and the identity path when it is off.
    fine = {
        "upstreams": {"app": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [{"path": "/api/keysmith", "upstream": "app"}],
        "keys": {"self_service": {"path": "/v1/me"}},
        "identity": {"enabled": False},
    }
    parse_config(yaml.safe_dump(fine).encode(), source="t.yaml", env={})


def test_an_overlap_error_starts_with_the_field_it_names() -> None:
    (problem,) = self_service_problems({"path": "/v1/webhooks"})
    assert problem.startswith("keys.self_service.path: "), (
        f"BUG: the overlap error should start with the field it names, got {problem!r}"
    )


async def test_rotating_a_key_with_another_role_or_its_own_limit_is_refused(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """The new secret would act with the old key's role and limit: a key may rotate only keys
    that stand where it does."""
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    viewer = await admin.key("acme", scopes=["keys:write"], attributes={"role": "viewer"})
    boss = await admin.key("acme", scopes=["keys:write"], attributes={"role": "admin"})
    fast = await admin.key(
        "acme",
        scopes=["keys:write"],
        attributes={"role": "viewer"},
        rateLimit={"requests": 100000, "per": "1s"},
    )
    peer = await admin.key("acme", scopes=["keys:write"], attributes={"role": "viewer"})
    s = viewer["secret"]
    for key in (boss, fast):
        status, answer = await api(gw, s, "POST", f"{PATH}/{key['id']}/rotate", {})
        assert (status, answer["error"]["code"]) == (403, "key_not_grantable"), answer
        assert await works(gw, key["secret"]) == 200  # untouched
    assert (await ok(gw, s, "POST", f"{PATH}/{peer['id']}/rotate", {}, 201))["secret"]


async def test_a_key_revoked_while_its_request_is_under_way_makes_nothing(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """Auth checked the key when the request began; a body sent slowly gives time to revoke
    it, and the key must be checked again before it acts."""
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    maker = await admin.key("acme", scopes=["keys:write"])
    body = b'{"name": "late", "scopes": []}'
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {maker['secret']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(head + body[:5])
        await writer.drain()
        await asyncio.sleep(0.2)  # the gateway has authenticated and waits for the body
        await admin.data("POST", f"/admin/keys/{maker['id']}/revoke")
        writer.write(body[5:])
        await writer.drain()
        status, _, answer = parse_response(await read_one_response(reader))
    finally:
        writer.close()
    assert status == 401, answer
    keys = await admin.data("GET", "/admin/orgs/acme/keys")
    assert [k["name"] for k in keys] == ["k"]


async def test_a_key_is_rotated_once_however_many_ask_at_once(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """One replacement per key: of five rotations at once one wins, the others are 409, and
    rotating the rotated key later is 409 too (rotate its replacement)."""
    _, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    old = await admin.key("acme", scopes=["items:read"])
    calls = [
        admin.call("POST", f"/admin/keys/{old['id']}/rotate", {"grace": "1h"}) for _ in range(5)
    ]
    answers = await asyncio.gather(*calls)
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409, 409]
    (winner,) = [body["data"] for status, body in answers if status == 201]
    live = [k for k in await admin.data("GET", "/admin/orgs/acme/keys") if k["revokedAt"] is None]
    assert {k["id"] for k in live} == {old["id"], winner["id"]}
    assert (await admin.data("GET", f"/admin/keys/{old['id']}"))["rotatedTo"] == winner["id"]
    status, body = await admin.call("POST", f"/admin/keys/{old['id']}/rotate", {})
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert "rotated already" in body["error"]["message"]


async def test_too_many_scopes_or_networks_are_refused(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A key's scopes go to the backend in one header: 100 at most, and 100 networks."""
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    maker = await admin.key("acme", scopes=["*"])
    many = [f"s{i}:read" for i in range(101)]
    networks = [f"10.0.{i}.0/24" for i in range(101)]
    for body in ({"name": "n", "scopes": many}, {"name": "n", "allowedIps": networks}):
        await refused(gw, maker["secret"], "POST", PATH, body, 400, "at most 100")
        status, answer = await admin.call("POST", "/admin/orgs/acme/keys", body)
        assert status == 400, answer


async def test_an_org_whose_plan_a_reload_removed_gets_no_new_key_and_no_500(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"

    def write(plans: dict[str, Any]) -> None:
        config = make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/v1/items", "upstream": "app", "auth": "key"}],
            store={"path": str(tmp_path / "state.db")},
            plans=plans,
        )
        path.write_text(yaml.safe_dump(config))

    write({"pro": PRO, "old": {}})
    gw = await gateway_factory(path)
    admin = Admin(gw)
    await admin.org("acme", plan="old")
    key = await admin.key("acme")
    write({"pro": PRO})
    await admin.data("POST", "/admin/reload")
    for method, route in (
        ("POST", "/admin/orgs/acme/keys"),
        ("POST", f"/admin/keys/{key['id']}/rotate"),
    ):
        status, body = await admin.call(method, route, {"name": "k"} if "orgs" in route else {})
        assert (status, body["error"]["code"]) == (403, "api_access_disabled"), body
        assert "not in the config" in body["error"]["message"]


async def test_a_throttled_key_makes_throttled_keys_and_a_replaced_key_renews_nothing(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A key with its own limit makes keys under that limit, and rotates only keys with the
    same; a key already replaced (in its grace) may not rotate its replacement, which would cut
    that short."""
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    slow = {"requests": 2, "per": 60.0, "burst": 0}
    throttled = await admin.key("acme", scopes=["keys:write"], rateLimit=slow)
    made = await ok(gw, throttled["secret"], "POST", PATH, {"name": "child"}, 201)
    assert made["rateLimit"] == slow
    free = await admin.key("acme", scopes=["keys:write"])
    status, answer = await api(gw, throttled["secret"], "POST", f"{PATH}/{free['id']}/rotate", {})
    assert (status, answer["error"]["code"]) == (403, "key_not_grantable")

    old = await admin.key("acme", scopes=["keys:write"])
    new = await admin.data("POST", f"/admin/keys/{old['id']}/rotate", {"grace": "1h"})
    status, answer = await api(gw, old["secret"], "POST", f"{PATH}/{new['id']}/rotate", {})
    assert (status, answer["error"]["code"]) == (409, "conflict"), answer
    assert "use its replacement" in answer["error"]["message"]
    assert await works(gw, new["secret"]) == 200


async def test_a_change_made_to_a_key_while_it_is_rotated_is_not_undone(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """The replacement is made from the key as read when the rotation began: a role taken
    away meanwhile (its body sent slowly) makes the rotation a 409, and no replacement lives."""
    gw, admin = await start(gateway_factory, upstream, store_config)
    await admin.org("acme", plan="pro")
    target = await admin.key("acme", attributes={"role": "admin"})
    body = b'{"grace": "1h"}'
    port = int(gw.admin_url.rsplit(":", 1)[1])
    head = (
        f"POST /admin/keys/{target['id']}/rotate HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body[:3])
        await writer.drain()
        await asyncio.sleep(0.2)
        await admin.data("PATCH", f"/admin/keys/{target['id']}", {"attributes": {"role": "viewer"}})
        writer.write(body[3:])
        await writer.drain()
        status, _, answer = parse_response(await read_one_response(reader))
    finally:
        writer.close()
    assert status == 409, answer
    assert b"changed while it was being rotated" in answer
    keys = await admin.data("GET", "/admin/orgs/acme/keys")
    live = [k for k in keys if k["revokedAt"] is None]
    assert [(k["id"], k["attributes"]) for k in live] == [(target["id"], {"role": "viewer"})]
