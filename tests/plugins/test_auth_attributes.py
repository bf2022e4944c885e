"""Org and key attributes: kept by every store, set through the admin API, shown by the identity
endpoint and sent to the backend as headers no client can forge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.config import ConfigError, parse_config
from gateway.control.openapi import build_openapi
from gateway.store import ApiKey, Org, Store
from tests.conftest import GatewayFactory, RunningGateway, Upstream, UpstreamFactory, make_config
from tests.helpers import ADMIN, Admin, eventually, write_config

CRM = {"fields": {"attributes.role": "role"}, "attribute_headers": {"role": "X-Crm-Role"}}


def crm_config(upstream: Upstream, store: dict[str, Any], **identity: Any) -> dict[str, Any]:
    return make_config(
        {"app": {"targets": [upstream.url]}},
        [
            {"path": "/v1/leads", "upstream": "app", "auth": "key"},
            {"path": "/public", "upstream": "app"},
        ],
        store=store,
        plans={"free": {}},
        identity={**CRM, **identity},
    )


async def me(gw: RunningGateway, secret: str, path: str = "/v1/me") -> dict[str, Any]:
    async with gw.session.get(
        f"{gw.url}{path}", headers={"Authorization": f"Bearer {secret}"}
    ) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = (await r.json())["data"]
        return data


async def role_seen(gw: RunningGateway, upstream: Upstream, secret: str) -> list[str]:
    """What the backend was told as X-Crm-Role on one keyed request."""
    async with gw.session.get(
        f"{gw.url}/v1/leads", headers={"Authorization": f"Bearer {secret}"}
    ) as r:
        assert r.status == 200
    return upstream.header_values(-1, "X-Crm-Role")


# -- the stores ----------------------------------------------------------------------------------


async def test_attributes_are_kept_by_every_store(store: Store) -> None:
    org = Org("org_1", "acme", "Acme", "free", 1.0, attributes={"role": "viewer"})
    await store.create_org(org)
    key = ApiKey(
        id="key_1",
        org_id=org.id,
        name="k",
        scopes=(),
        environment="live",
        prefix="fw_live_AbCd",
        last4="wxyz",
        key_hash="h1",
        created_at=2.0,
        attributes={"role": "sales-manager", "team": "north"},
    )
    await store.create_key(key)
    assert (await store.get_org("acme")) == org
    assert (await store.find_key("h1")) == key
    changed = await store.update_key(key.id, lambda k: k.with_changes(attributes={}))
    assert changed is not None
    assert (await store.get_key(key.id)) == changed
    assert changed.attributes == {}
    await store.update_org(org.id, lambda o: o.with_changes(attributes={"a": "b"}))
    found = await store.get_org(org.id)
    assert found is not None
    assert found.attributes == {"a": "b"}


def test_records_of_the_previous_version_read_without_attributes() -> None:
    org = Org("org_1", "acme", "Acme", "free", 1.0, attributes={"x": "y"}).to_record()
    del org["attributes"]
    assert Org.from_record(org).attributes == {}
    key = ApiKey("key_1", "org_1", "k", (), "live", "fw_live_AbCd", "wxyz", "h", 2.0).to_record()
    del key["attributes"]
    assert ApiKey.from_record(key).attributes == {}


# -- the admin API -------------------------------------------------------------------------------


async def test_attributes_round_trip_through_the_admin_api(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """Set on create, replaced whole by PATCH ({} and null remove them all, absent keeps them),
    carried by a rotation, and audited before and after."""
    gw = await gateway_factory(crm_config(upstream, store_config))
    admin = Admin(gw)
    status, body = await admin.call(
        "POST",
        "/admin/orgs",
        {"slug": "acme", "name": "Acme", "plan": "free", "attributes": {"role": "viewer"}},
    )
    assert (status, body["data"]["attributes"]) == (201, {"role": "viewer"})
    key = await admin.key(attributes={"role": "sales-manager", "team": "north"})
    assert key["attributes"] == {"role": "sales-manager", "team": "north"}
    assert (await admin.data("GET", f"/admin/keys/{key['id']}"))["attributes"] == key["attributes"]
    [listed] = await admin.data("GET", "/admin/orgs/acme/keys")
    assert listed["attributes"] == key["attributes"]
    plain = await admin.key()
    assert plain["attributes"] == {}

    path = f"/admin/keys/{key['id']}"
    assert (await admin.data("PATCH", path, {"name": "n"}))["attributes"] == key["attributes"]
    replaced = await admin.data("PATCH", path, {"attributes": {"role": "admin"}})
    assert replaced["attributes"] == {"role": "admin"}
    rotated = await admin.data("POST", f"{path}/rotate", {"grace": "1h"})
    assert rotated["attributes"] == {"role": "admin"}
    assert (await admin.data("PATCH", path, {"attributes": {}}))["attributes"] == {}
    await admin.data("PATCH", path, {"attributes": {"x": "1"}})
    assert (await admin.data("PATCH", path, {"attributes": None}))["attributes"] == {}

    org = await admin.data("PATCH", "/admin/orgs/acme", {"attributes": {"region": "eu"}})
    assert org["attributes"] == {"region": "eu"}
    org = await admin.data("PATCH", "/admin/orgs/acme", {"plan": "free"})
    assert org["attributes"] == {"region": "eu"}
    assert (await admin.data("GET", "/admin/orgs/acme"))["attributes"] == {"region": "eu"}

    [update, *_] = await admin.data("GET", "/admin/audit?action=org.update")
    assert update["after"]["attributes"] == {"region": "eu"}
    updates = await admin.data("GET", "/admin/audit?action=key.update")
    changes = [(e["before"]["attributes"], e["after"]["attributes"]) for e in updates]
    assert ({"role": "sales-manager", "team": "north"}, {"role": "admin"}) in changes


async def test_bad_attributes_are_refused_naming_the_field(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(crm_config(upstream, store_config))
    admin = Admin(gw)
    await admin.org(plan="free")
    key = await admin.key()
    org = {"slug": "beta", "name": "B", "plan": "free"}
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/admin/orgs", {**org, "attributes": {"Role": "x"}}, "attributes: 'Role' is not"),
        ("POST", "/admin/orgs", {**org, "attributes": None}, "attributes: must be a mapping"),
        ("POST", "/admin/orgs", {**org, "attributes": ["role"]}, "attributes: must be a mapping"),
        (
            "POST",
            "/admin/orgs/acme/keys",
            {"name": "k", "attributes": {"role": 5}},
            "attributes.role: must be a string",
        ),
        (
            "POST",
            "/admin/orgs/acme/keys",
            {"name": "k", "attributes": {"role": "a\r\nX-Org-Id: org_evil"}},
            "attributes: role: must hold no control characters",
        ),
        (
            "PATCH",
            f"/admin/keys/{key['id']}",
            {"attributes": {"role": " admin"}},
            "attributes: role: must hold no control characters and no space at either end",
        ),
        (
            "PATCH",
            f"/admin/keys/{key['id']}",
            {"attributes": {"role": "x" * 257}},
            "attributes: role: must be 1 to 256 characters (got 257)",
        ),
        (
            "PATCH",
            f"/admin/keys/{key['id']}",
            {"attributes": {"role": ""}},
            "attributes: role: must be 1 to 256 characters (got 0)",
        ),
        (
            "PATCH",
            "/admin/orgs/acme",
            {"attributes": {f"a{i}": "x" for i in range(33)}},
            "attributes: at most 32 attributes (got 33)",
        ),
        (
            "PATCH",
            "/admin/orgs/acme",
            {"attributes": {"a" * 65: "x"}},
            "attributes: 'aaaa",
        ),
    ]
    for method, path, body, message in cases:
        status, got = await admin.call(method, path, body)
        assert (status, got["error"]["code"]) == (400, "bad_request"), (body, got)
        assert got["error"]["message"].startswith(message), got
    unchanged = await admin.data("GET", f"/admin/keys/{key['id']}")
    assert unchanged["attributes"] == {}
    fine = {f"a{i}": "é" * 256 for i in range(32)}  # the bounds themselves are accepted
    assert (await admin.data("PATCH", "/admin/orgs/acme", {"attributes": fine}))[
        "attributes"
    ] == fine


# -- the identity endpoint and the backend ---------------------------------------------------------


async def test_a_key_inherits_its_orgs_attributes_unless_it_has_its_own(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw = await gateway_factory(
        crm_config(upstream, store_config, fields={"attributes.role": "role", "attributes.x": "x"})
    )
    admin = Admin(gw)
    await admin.call(
        "POST",
        "/admin/orgs",
        {
            "slug": "acme",
            "name": "Acme",
            "plan": "free",
            "attributes": {"role": "viewer", "region": "eu"},
        },
    )
    own = await admin.key(attributes={"role": "sales-manager"})
    inherits = await admin.key()
    data = await me(gw, own["secret"])
    assert data["attributes"] == {"role": "sales-manager", "region": "eu"}
    assert (data["role"], data["x"]) == ("sales-manager", None)
    assert (await me(gw, inherits["secret"]))["role"] == "viewer"
    assert await role_seen(gw, upstream, own["secret"]) == ["sales-manager"]
    assert await role_seen(gw, upstream, inherits["secret"]) == ["viewer"]


async def test_identity_fields_can_hide_fields(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    hidden = {"keyName": None, "plan": None, "environment": None, "rateLimit": None}
    gw = await gateway_factory(
        crm_config(
            upstream,
            store_config,
            path="/api/v1/me",
            fields={**hidden, "attributes": None, "orgSlug": "slug"},
        )
    )
    admin = Admin(gw)
    await admin.org(plan="free")
    key = await admin.key(attributes={"role": "x"})
    data = await me(gw, key["secret"], "/api/v1/me")
    assert list(data) == ["apiKeyId", "orgId", "orgName", "slug", "scopes"]


async def test_the_backend_gets_attribute_headers_and_never_a_clients_copy(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """On a keyed route and on a public one, in any case, with '_' for '-', and repeated; an
    attribute the key does not have sends no header at all."""
    gw = await gateway_factory(
        crm_config(
            upstream, store_config, attribute_headers={"role": "X-Crm-Role", "team": "X-Team"}
        )
    )
    admin = Admin(gw)
    await admin.org(plan="free")
    key = await admin.key(attributes={"role": "sales-manager"})
    spoofs = [
        ("X-Crm-Role", "admin"),
        ("x_crm_role", "admin"),
        ("X-CRM-ROLE", "owner"),
        ("X-Team", "evil"),
        ("x_team", "evil"),
    ]
    for path, auth in (
        ("/v1/leads", [("Authorization", f"Bearer {key['secret']}")]),
        ("/public", []),
    ):
        async with gw.session.get(f"{gw.url}{path}", headers=[*auth, *spoofs]) as r:
            assert r.status == 200
        seen = [
            (name.lower().replace("_", "-"), value)
            for name, value in upstream.seen[-1].headers
            if name.lower().replace("_", "-") in {"x-crm-role", "x-team"}
        ]
        assert seen == ([("x-crm-role", "sales-manager")] if auth else []), (path, seen)


async def test_an_attribute_change_reaches_the_next_request(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A key's and an org's PATCH drop the cached identity, like a revocation does."""
    gw = await gateway_factory(crm_config(upstream, store_config))
    admin = Admin(gw)
    await admin.org(plan="free")
    key = await admin.key(attributes={"role": "viewer"})
    other = await admin.key()
    assert await role_seen(gw, upstream, key["secret"]) == ["viewer"]  # warm in the cache
    assert await role_seen(gw, upstream, other["secret"]) == []
    await admin.data("PATCH", f"/admin/keys/{key['id']}", {"attributes": {"role": "admin"}})
    await eventually(lambda: role_seen(gw, upstream, key["secret"]), 1.0, expect=["admin"])
    await admin.data("PATCH", "/admin/orgs/acme", {"attributes": {"role": "member"}})
    await eventually(lambda: role_seen(gw, upstream, other["secret"]), 1.0, expect=["member"])
    assert (await me(gw, other["secret"]))["role"] == "member"
    assert (await me(gw, key["secret"]))["role"] == "admin"  # its own still wins


async def test_an_attribute_change_reaches_the_other_instance_within_a_second(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    shared_stores: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a = await gateway_factory(crm_config(upstream, shared_stores[0]))
    b = await gateway_factory(crm_config(upstream, shared_stores[1]))
    admin = Admin(a)
    await admin.org(plan="free")
    key = await admin.key(attributes={"role": "viewer"})
    assert await role_seen(b, upstream, key["secret"]) == ["viewer"]  # warm in b's cache
    await admin.data("PATCH", f"/admin/keys/{key['id']}", {"attributes": {"role": "admin"}})
    await eventually(lambda: role_seen(b, upstream, key["secret"]), 1.0, expect=["admin"])


async def test_a_reload_changes_which_headers_are_stripped(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, upstream, ["/a"])
    gw = await gateway_factory(path)

    async def forwarded() -> list[str]:
        async with gw.session.get(f"{gw.url}/a", headers={"x_crm_role": "admin"}) as r:
            assert r.status == 200
        return upstream.header_values(-1, "x_crm_role")

    assert await forwarded() == ["admin"]  # nobody's header yet
    write_config(path, upstream, ["/a"], identity={"attribute_headers": {"role": "X-Crm-Role"}})
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 200, await r.text()
    assert await forwarded() == []
    # Renamed: the old name stays stripped, since its backend may trust it until changed too.
    write_config(path, upstream, ["/a"], identity={"attribute_headers": {"role": "X-Role"}})
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 200, await r.text()
    assert await forwarded() == []


# -- the config ----------------------------------------------------------------------------------


def problems(**config: Any) -> list[str]:
    text = yaml.safe_dump(make_config({"app": {"targets": ["http://127.0.0.1:9"]}}, **config))
    with pytest.raises(ConfigError) as info:
        parse_config(text.encode(), source="test.yaml", env=os.environ)
    return info.value.problems


@pytest.mark.parametrize(
    ("identity", "problem"),
    [
        ({"fields": {"attributes.Role": "role"}}, "'Role' is not an attribute name"),
        ({"fields": {"attributes.role": None}}, "attributes.role: null shows nothing"),
        ({"fields": {"attributes.role": "a b"}}, "'a b' is not a usable field name"),
        ({"fields": {"role": "r"}}, "unknown field 'role'"),
        ({"fields": {"attributes.role": "orgId"}}, "orgId and attributes.role would both be"),
        ({"fields": {"apiKeyId": "id", "orgId": "id"}}, "apiKeyId and orgId would both be 'id'"),
        ({"attribute_headers": {"Role": "X-Role"}}, "'Role' is not an attribute name"),
        ({"attribute_headers": {"role": "X Role"}}, "role: not a header name: 'X Role'"),
        ({"attribute_headers": {"role": "x_org_id"}}, "role: x_org_id is the gateway's own"),
        ({"attribute_headers": {"role": "Authorization"}}, "is the gateway's own"),
        ({"attribute_headers": {"role": "X-Request-Id"}}, "is the gateway's own"),
        ({"attribute_headers": {"role": "Connection"}}, "is the gateway's own"),
        ({"attribute_headers": {"role": "Content-Type"}}, "is the gateway's own"),
        (
            {"attribute_headers": {"role": "X-Role", "team": "x_role"}},
            "role and team would both be sent as x_role",
        ),
    ],
)
def test_identity_config_is_validated_naming_the_field(
    identity: dict[str, Any], problem: str
) -> None:
    [found] = problems(routes=[], identity=identity)
    assert found.startswith("identity."), found
    assert problem in found, found


def test_a_route_rule_cannot_change_an_attribute_header() -> None:
    [found] = problems(
        routes=[
            {"path": "/a", "upstream": "app", "headers": {"request": {"set": {"x-crm-role": "x"}}}}
        ],
        identity={"attribute_headers": {"role": "X-Crm-Role"}},
    )
    assert found.startswith("routes: routes[0].headers.request names x-crm-role"), found


def test_the_openapi_document_shows_attributes_where_the_config_puts_them() -> None:
    text = yaml.safe_dump(
        make_config({}, [], identity={"fields": {"attributes.role": "role", "plan": None}})
    )
    config = parse_config(text.encode(), source="test.yaml", env=os.environ).config
    schemas = build_openapi(config)["components"]["schemas"]
    identity = schemas["Identity"]["properties"]
    assert "plan" not in identity
    assert identity["role"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert identity["attributes"]["additionalProperties"] == {"type": "string"}
    assert "attributes" in schemas["Org"]["required"]
    assert "attributes" in schemas["Key"]["required"]
    body = schemas["CreateKey"]["properties"]["attributes"]
    assert (body["maxProperties"], body["propertyNames"]) == (
        32,
        {"pattern": "^[a-z][a-z0-9_]{0,63}$"},
    )


async def test_a_replay_does_not_carry_the_first_callers_attribute_header(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
) -> None:
    """An idempotent replay keeps the backend's own X- headers, not one that told it who called
    (another key of the org may be asking)."""

    async def echo(request: web.BaseRequest) -> web.Response:
        role = request.headers.get("X-Crm-Role", "")
        return web.json_response({}, status=201, headers={"X-Crm-Role": role, "X-Lead": "7"})

    backend = await upstream_factory(echo)
    config = crm_config(backend, store_config)
    config["routes"][0]["idempotency"] = "optional"
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org(plan="free")
    key = await admin.key(attributes={"role": "sales-manager"})
    headers = {"Authorization": f"Bearer {key['secret']}", "Idempotency-Key": "ik-1"}
    answers = []
    for _ in range(2):
        async with gw.session.post(f"{gw.url}/v1/leads", json={}, headers=headers) as r:
            answers.append((r.status, r.headers.get("X-Crm-Role"), r.headers.get("X-Lead")))
    assert answers == [(201, "sales-manager", "7"), (201, None, "7")]
    assert len(backend.seen) == 1


async def test_another_role_or_scope_never_gets_a_replay_of_its_orgs_answer(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
) -> None:
    """Idempotency records are the org's, but what the backend was told about the caller is
    part of the request: a key with another role or other scopes reusing the Idempotency-Key is
    a 422, while the same caller after a rotation still gets its replay."""

    async def echo(request: web.BaseRequest) -> web.Response:
        return web.json_response({"roleSeen": request.headers.get("X-Crm-Role")}, status=201)

    backend = await upstream_factory(echo)
    config = crm_config(backend, store_config)
    config["routes"][0]["idempotency"] = "optional"
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org(plan="free")
    boss = await admin.key(attributes={"role": "admin"})
    viewer = await admin.key(attributes={"role": "viewer"})
    wider = await admin.key(attributes={"role": "admin"}, scopes=["reports:read"])

    async def post(secret: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "ik-roles"}
        async with gw.session.post(f"{gw.url}/v1/leads", json={}, headers=headers) as r:
            return r.status, await r.json()

    assert await post(boss["secret"]) == (201, {"roleSeen": "admin"})
    for other in (viewer, wider):
        status, body = await post(other["secret"])
        assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    rotated = await admin.data("POST", f"/admin/keys/{boss['id']}/rotate", {"grace": "1h"})
    assert await post(rotated["secret"]) == (201, {"roleSeen": "admin"})
    assert len(backend.seen) == 1
