"""The admin API's OpenAPI 3.1 document: valid, complete, served, and true (Schemathesis)."""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
import yaml
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import AcceptedNegativeData, Failure, FailureGroup

from gateway.config import GatewayConfig, parse_config
from gateway.config.keys import IDENTITY_FIELDS, TOKEN_FIELDS
from gateway.config.types import parse_duration
from gateway.console.app import Console
from gateway.control.openapi import DATA_PLANE_TAG, OPENAPI_PATH, build_openapi
from tests.conftest import ADMIN_TOKEN, GatewayFactory, GatewayProc, Spawn, make_config
from tests.helpers import ADMIN

# Operations documented ahead of their handlers (operationIds). Schemathesis leaves them alone
# and the route walk lets them be missing; empty it when they land.
PENDING: set[str] = set()

# Operations whose valid-looking input the server may still refuse with 400, for what no JSON
# Schema can state; for them (and only them) a 400 to data that fits the document passes.
BEYOND_SCHEMA = {
    "listRequests": "until must be after since",
    "getUsage": "until must be after since; at most 1440 minutes or 9600 hours at once",
    "listAudit": "until must be after since",
}
EXAMPLES = 40  # per operation and phase: the whole file stays within a minute on 2 slow cores
DAY = 86400
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # Schemathesis' default


def config_of(**extra: Any) -> GatewayConfig:
    text = orjson.dumps(make_config({}, [], **extra))
    return parse_config(text, source="test.yaml", env=os.environ).config


# -- the document ------------------------------------------------------------------------------


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                yield method.upper(), path, operation


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build_openapi(config_of())
    validate(document)  # openapi-spec-validator: the 3.1 schema, refs, parameters, ids
    assert document["openapi"] == "3.1.0"
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(document):
        assert op["summary"], (method, path)
        for name in ("org", "id", "delivery"):
            if "{" + name + "}" in path:
                assert name in [p["name"] for p in op["parameters"]], (method, path)
        if path.startswith("/admin/"):
            assert "401" in op["responses"], (method, path)


def test_bodies_are_the_handlers_models_and_plans_the_configs() -> None:
    schemas = build_openapi(config_of(plans={"free": {}, "pro": {}}))["components"]["schemas"]
    assert schemas["CreateOrg"]["additionalProperties"] is False
    assert schemas["CreateOrg"]["properties"]["plan"]["enum"] == ["free", "pro"]
    assert schemas["CreateKey"]["properties"]["rateLimit"]["anyOf"][0] == {
        "$ref": "#/components/schemas/RateLimitOverride"
    }
    assert set(schemas["PublishEvent"]["required"]) == {"org", "type"}


def test_the_data_plane_endpoints_are_where_the_config_serves_them() -> None:
    config = config_of(
        identity={"path": "/api/v1/me", "fields": {"orgId": "tenantId"}},
        webhooks={"api_path": None},
        request_log={"api_path": None},
    )
    document = build_openapi(config)
    data_plane = {p for _, p, op in operations(document) if DATA_PLANE_TAG in op["tags"]}
    assert data_plane == {"/api/v1/me"}
    assert document["paths"]["/api/v1/me"]["servers"][0]["url"] == "{origin}"
    identity = document["components"]["schemas"]["Identity"]["properties"]
    # The token fields only where the config takes tokens.
    assert set(identity) == {*IDENTITY_FIELDS, "tenantId"} - {"orgId", *TOKEN_FIELDS}
    default = build_openapi(config_of())
    assert {
        "/v1/me",
        "/v1/requests",
        "/v1/webhooks/{id}/deliveries/{delivery}/retry",
    } <= set(default["paths"])


def test_with_oauth_the_orgs_endpoints_take_access_tokens_too() -> None:
    oauth = {
        "audience": "https://api.example.test",
        "issuer": "https://auth.example.test",
        "discovery_url": "https://auth.example.test/.well-known/openid-configuration",
        "algorithms": ["RS256"],
    }
    document = build_openapi(config_of(oauth=oauth, keys={"self_service": {}}))
    validate(document)
    assert document["components"]["securitySchemes"]["accessToken"] == {
        "type": "openIdConnect",
        "openIdConnectUrl": oauth["discovery_url"],
    }
    identity = document["components"]["schemas"]["Identity"]
    for field in ("subject", "clientId", "apiKeyId", "keyName"):
        assert {"type": "null"} in identity["properties"][field]["anyOf"], field
    for method, path, op in operations(document):
        if DATA_PLANE_TAG not in op["tags"]:
            continue
        expected = (
            [{"apiKey": []}]
            if path.startswith("/v1/keys")
            else [
                {"apiKey": []},
                {"accessToken": []},
            ]
        )
        assert op["security"] == expected, (method, path)


async def test_every_admin_route_is_documented_and_every_documented_one_served(
    gateway_factory: GatewayFactory,
) -> None:
    """Walks the admin app's routes: a new route without its documentation fails here."""
    gw = await gateway_factory(make_config({}, []))
    app = gw.process._admin_runner.app  # type: ignore[union-attr]  # the app it serves
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"  # aiohttp's, with GET
        and route.resource is not None
        # The console's pages and forms are HTML for people, not the API (README: Console).
        and not isinstance(getattr(route.handler, "__self__", None), Console)
    }
    async with gw.session.get(f"{gw.admin_url}{OPENAPI_PATH}", headers=ADMIN) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        document = await r.json()
    assert document == orjson.loads(orjson.dumps(build_openapi(gw.process.loaded.config)))
    documented = {
        (method, path): op["operationId"]
        for method, path, op in operations(document)
        if DATA_PLANE_TAG not in op["tags"]
    }
    assert served - set(documented) == set(), "served but not documented"
    missing = {documented[route] for route in set(documented) - served}
    assert missing <= PENDING, "documented but not served"
    async with gw.session.get(f"{gw.admin_url}{OPENAPI_PATH}") as r:
        assert r.status == 401


async def test_a_reload_rebuilds_the_document(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """The document is the config in force's: a plan a reload adds is in it at once."""
    path = tmp_path / "gateway.yaml"
    config = make_config({}, [], store={"path": str(tmp_path / "state.db")})

    def write(*plans: str) -> None:
        path.write_text(yaml.safe_dump({**config, "plans": {name: {} for name in plans}}))

    async def plans() -> list[str]:
        async with gw.session.get(f"{gw.admin_url}{OPENAPI_PATH}", headers=ADMIN) as r:
            document = await r.json()
        plan = document["components"]["schemas"]["CreateOrg"]["properties"]["plan"]
        return list(plan["enum"])

    write("free")
    gw = await gateway_factory(path)
    assert await plans() == ["free"]
    write("free", "pro")
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 200, await r.text()
    assert await plans() == ["free", "pro"]


# -- the document against the running admin API --------------------------------------------------


def seed(gw: GatewayProc) -> dict[str, list[str]]:
    """Records for generated requests to find, by pool: orgs (ids and slugs), keys, webhook
    endpoints, deliveries; what revoking, rotating or deleting uses up has pools of its own."""
    session = requests.Session()
    session.headers.update(ADMIN)
    session.trust_env = False

    def call(method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = session.request(method, gw.admin_url + path, json=body, timeout=10)
        assert r.status_code == status, r.text
        return r.json()["data"]

    pools: dict[str, list[str]] = {name: [] for name in POOL_OF.values()}
    for slug in ("acme", "globex"):
        body = {"slug": slug, "name": slug.title(), "plan": "default"}
        pools["org"] += [call("POST", "/admin/orgs", body, 201)["id"], slug]
        for pool in ("key", "key", "revoked key", "rotated key", "rotated key"):
            pools[pool].append(call("POST", f"/admin/orgs/{slug}/keys", {"name": "k"}, 201)["id"])
        for pool in ("webhook", "webhook", "deleted webhook"):
            # Nothing listens on port 9: the deliveries stay pending, retried.
            body = {"url": "http://127.0.0.1:9/hooks", "events": ["invoice.created"]}
            pools[pool].append(call("POST", f"/admin/orgs/{slug}/webhooks", body, 201)["id"])
        call("POST", "/admin/events", {"org": slug, "type": "invoice.created"}, 202)
    for endpoint in pools["webhook"]:
        pools["delivery"] += [
            d["id"] for d in call("GET", f"/admin/webhooks/{endpoint}/deliveries")
        ]
    assert len(pools["delivery"]) == 4
    return pools


def within_bounds(body: dict[str, Any]) -> None:
    """What no JSON Schema can state, made true of a body: an expiry ahead, durations written as
    text within their bounds, whole numbers written without a fraction, a limit that refills
    within a year. Only values out of those bounds change, and only in spelling's number or
    year, so what the document allows is still tried in all its forms. Positive cases only."""
    if isinstance(body.get("expiresAt"), str):
        body["expiresAt"] = ahead(body["expiresAt"])
    for name in ("grace", "overlap"):
        if isinstance(body.get(name), str):
            body[name] = duration_within(body[name], 0, 30 * DAY)
    limit = body.get("rateLimit")
    if isinstance(limit, dict):
        for name in ("requests", "burst"):
            if isinstance(limit.get(name), float):
                limit[name] = int(limit[name])
        if isinstance(limit.get("per"), str):
            limit["per"] = duration_within(limit["per"], 1, 365 * DAY)
        per = seconds(limit["per"]) if isinstance(limit["per"], str) else limit["per"]
        if (
            per is not None
            and (limit["requests"] + limit.get("burst", 0)) * per / limit["requests"] > 365 * DAY
        ):
            limit["burst"] = 0


def seconds(text: str) -> float | None:
    try:
        return parse_duration(text)
    except ValueError:
        return None  # not read as a duration: left as it is, for the check to judge


def duration_within(text: str, least: float, most: float) -> str:
    """The same spelling with 1 (1000 for ms) as its number, if its own is out of bounds."""
    value = seconds(text)
    if value is None or least <= value <= most:
        return text
    one = "1000" if text.strip().endswith("ms") else "1"
    return re.sub(r"[0-9]+(\.[0-9]+)?", one, text, count=1)


def ahead(text: str) -> str:
    """An RFC 3339 time moved to next year (a leap year for 29 February), if it is not ahead."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    now = datetime.now(UTC)
    if moment.tzinfo is None or now < moment < now + timedelta(days=3650):
        return text
    year = now.year + 1
    while text[4:10] == "-02-29" and not calendar.isleap(year):
        year += 1
    return f"{year:04d}{text[4:]}"


def settings(**config: Any) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"adminToken": {"bearer": ADMIN_TOKEN}}},
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            **config,
        }
    )


def load_schema(gw: GatewayProc, **config: Any) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(
        gw.admin_url + OPENAPI_PATH, headers=ADMIN, config=settings(**config), timeout=10
    )


def spawn_admin(spawn_gateway: Spawn) -> GatewayProc:
    return spawn_gateway(
        {
            "admin": {"token": ADMIN_TOKEN},
            "upstreams": {},
            "routes": [],
            "webhooks": {"allow_private_targets": True},
            "keys": {"self_service": {"path": "/v1/keys"}},
        }
    )


# Which pool of seeded records a path parameter draws from, by operation and name.
POOL_OF = {
    "org": "org",
    "POST /admin/keys/{id}/revoke": "revoked key",
    "POST /admin/keys/{id}/rotate": "rotated key",
    "/admin/keys/": "key",
    "DELETE /admin/webhooks/{id}": "deleted webhook",
    "/admin/webhooks/": "webhook",
    "/admin/deliveries/": "delivery",
}


def pool_of(label: str, name: str) -> str:
    if name in POOL_OF:
        return POOL_OF[name]
    if label in POOL_OF:
        return POOL_OF[label]
    return next(pool for prefix, pool in POOL_OF.items() if prefix in label)


@pytest.fixture
def admin_api(
    spawn_gateway: Spawn, request: pytest.FixtureRequest
) -> schemathesis.schemas.BaseSchema:
    """A gateway process (local store), seeded, and its document as Schemathesis reads it."""
    # Schemathesis 4.32 renames the test per operation through Node._nodeid, which pytest 9.2
    # no longer has: give it one to write to (pytest's reports keep the real node id).
    request.node._nodeid = request.node.nodeid
    gw = spawn_admin(spawn_gateway)
    pools = seed(gw)
    beyond = {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}}
    schema = load_schema(
        gw, operations=[{"include-operation-id": sorted(BEYOND_SCHEMA), "checks": beyond}]
    )

    @schema.hook
    def flatmap_path_parameters(context: Any, parameters: dict[str, Any] | None) -> Any:
        """Half the requests name records that exist: generated ids alone only find 404s."""
        if not parameters:
            return st.just(parameters)
        label = context.operation.label
        seeded = {name: st.sampled_from(pools[pool_of(label, name)]) for name in parameters}
        return st.one_of(st.just(parameters), st.fixed_dictionaries(seeded))

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        """Half the events go to an org that exists."""
        if context.operation.label != "POST /admin/events" or not isinstance(body, dict):
            return st.just(body)
        if not isinstance(body.get("org"), str):
            return st.just(body)  # the org may be what makes it invalid: leave it
        return st.one_of(
            st.just(body), st.sampled_from(pools["org"]).map(lambda org: {**body, "org": org})
        )

    @schema.hook
    def filter_failure(context: Any, failure: Failure, case: Any, response: Any) -> bool:
        """All failures count but one the setup makes: with allow_private_targets the gateway
        resolves no webhook host, so it takes a malformed one (http://a*b/) that production
        refuses when the name does not resolve. The document says what a host must be."""
        malformed_host = "violates `pattern` at /properties/url" in failure.message
        return not (isinstance(failure, AcceptedNegativeData) and malformed_host)

    @schema.hook
    def map_case(context: Any, case: schemathesis.Case) -> schemathesis.Case:
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        if positive and isinstance(case.body, dict):
            within_bounds(case.body)
        return case

    return schema


api = schemathesis.pytest.from_fixture("admin_api").exclude(tag=DATA_PLANE_TAG)
if PENDING:
    api = api.exclude(operation_id=sorted(PENDING))


@pytest.mark.slow
@api.parametrize()
def test_the_admin_api_answers_as_documented(case: schemathesis.Case) -> None:
    """Every admin operation, with Schemathesis' checks: no 5xx, only documented statuses,
    content types and bodies, valid data accepted, invalid data refused, auth enforced."""
    case.call_and_validate()


@pytest.mark.slow
def test_an_undocumented_answer_fails(spawn_gateway: Spawn) -> None:
    """The checks bite: drop getOrg's 404 from the document and asking for no org fails."""
    gw = spawn_admin(spawn_gateway)
    schema = load_schema(gw)
    operation = schema["/admin/orgs/{org}"]["GET"]
    case = operation.Case(path_parameters={"org": "no-such-org"})
    assert case.call_and_validate(headers=ADMIN).status_code == 404  # documented: passes
    del schema.raw_schema["paths"]["/admin/orgs/{org}"]["get"]["responses"]["404"]
    schema = schemathesis.openapi.from_dict(schema.raw_schema, config=settings())
    case = schema["/admin/orgs/{org}"]["GET"].Case(path_parameters={"org": "no-such-org"})
    with pytest.raises(FailureGroup, match="Undocumented status code"):
        case.call_and_validate(base_url=gw.admin_url, headers=ADMIN)


@pytest.mark.slow
def test_the_data_plane_answers_as_documented(spawn_gateway: Spawn) -> None:
    """The data plane's own endpoints, one call each with an API key, against the document."""
    gw = spawn_admin(spawn_gateway)
    schema = load_schema(gw)
    session = requests.Session()
    session.trust_env = False
    session.post(
        f"{gw.admin_url}/admin/orgs",
        json={"slug": "acme", "name": "A", "plan": "default"},
        headers=ADMIN,
        timeout=10,
    ).raise_for_status()
    key = session.post(
        f"{gw.admin_url}/admin/orgs/acme/keys",
        json={"name": "k", "scopes": ["webhooks:write", "logs:read", "keys:write"]},
        headers=ADMIN,
        timeout=10,
    ).json()["data"]["secret"]

    def call(method: str, path: str, status: int, **parts: Any) -> Any:
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(
            base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, session=session
        )
        assert response.status_code == status, response.text
        return response.json().get("data")

    call("GET", "/v1/me", 200)
    body = {"url": "http://127.0.0.1:9/hooks", "events": ["invoice.created"]}
    endpoint = {"id": call("POST", "/v1/webhooks", 201, body=body)["id"]}
    call("GET", "/v1/webhooks", 200)
    call("PATCH", "/v1/webhooks/{id}", 200, path_parameters=endpoint, body={"description": "d"})
    call("POST", "/v1/webhooks/{id}/ping", 202, path_parameters=endpoint)
    delivery = call("GET", "/v1/webhooks/{id}/deliveries", 200, path_parameters=endpoint)[0]
    both = {**endpoint, "delivery": delivery["id"]}
    call("GET", "/v1/webhooks/{id}/deliveries/{delivery}", 200, path_parameters=both)
    call("POST", "/v1/webhooks/{id}/rotate", 201, path_parameters=endpoint, body={})
    call("DELETE", "/v1/webhooks/{id}", 200, path_parameters=endpoint)
    call("GET", "/v1/webhooks/{id}", 404, path_parameters=endpoint)
    call("GET", "/v1/requests", 200, query={"status": "2xx", "limit": 5})
    made = {
        "id": call("POST", "/v1/keys", 201, body={"name": "made", "scopes": ["logs:read"]})["id"]
    }
    call("GET", "/v1/keys", 200)
    call("GET", "/v1/keys/{id}", 200, path_parameters=made)
    call("PATCH", "/v1/keys/{id}", 200, path_parameters=made, body={"name": "renamed"})
    rotated = {"id": call("POST", "/v1/keys/{id}/rotate", 201, path_parameters=made, body={})["id"]}
    call("POST", "/v1/keys/{id}/revoke", 200, path_parameters=made)
    call("DELETE", "/v1/keys/{id}", 200, path_parameters=rotated)
