"""The OpenAPI 3.1 document of the admin API, served at /admin/openapi.json."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson
from aiohttp import web

from gateway.api.bodies import Body
from gateway.api.keys_service import CreateKey, OwnCreateKey, OwnUpdateKey, RotateKey, UpdateKey
from gateway.config import GatewayConfig
from gateway.control.openapi_schemas import (
    PATH_PARAMETERS,
    QUERY,
    STRING,
    Schema,
    body_schemas,
    listing,
    record,
    record_schemas,
    ref,
)
from gateway.control.orgs_api import CreateOrg, UpdateOrg
from gateway.webhooks.service import CreateEndpoint, PublishEvent, RotateSecret, UpdateEndpoint

OPENAPI_PATH = "/admin/openapi.json"
DATA_PLANE_TAG = "data plane"  # served on the data listener, for an API key
# Stand-ins in the routes below for the data plane's configurable paths.
IDENTITY, WEBHOOKS, REQUEST_LOG, KEYS = "IDENTITY", "WEBHOOKS", "REQUEST_LOG", "KEYS"


@dataclass(frozen=True, slots=True)
class Op:
    id: str  # the operationId; its summary is in SUMMARIES
    # "201 Org": the status and the record in data ("[Org]": a list of them); "text" is
    # text/plain and "OpenApi" a document, both without the data envelope.
    answer: str
    errors: str  # the error statuses it answers besides 400, which any may; a body adds 413
    body: type[Body] | None = None
    optional_body: bool = False  # no body reads as {}: every field has a default
    query: tuple[str, ...] = ()  # names in QUERY
    meta: str | None = None  # the record in meta, if any
    limits: bool = False  # the answer carries the caller's limits beside data


_ADMIN = "401 503"  # every admin call that reads the store
_FOUND = "401 404 503"
_OWN = "401 403 404 429 503"  # a key's calls on the data plane
_REQUESTS = ("org", "key", "route", "status", "since", "until", "limit", "cursor")
_USAGE = ("org", "key", "bucket", "since", "until")
_AUDIT = ("org", "action", "since", "until", "limit", "cursor")
_OWN_META = "RequestMeta"

# tag -> path -> method -> operation. IDENTITY, WEBHOOKS and REQUEST_LOG stand for the
# configured paths.
OPERATIONS: dict[str, dict[str, dict[str, Op]]] = {
    "health": {
        "/healthz": {"get": Op("healthz", "200 Health", "")},
        "/readyz": {"get": Op("readyz", "200 Readiness", "")},
        "/metrics": {"get": Op("metrics", "200 text", "")},
    },
    "config": {
        "/admin/config": {"get": Op("getConfig", "200 Config", "401")},
        "/admin/reload": {"post": Op("reloadConfig", "200 Reloaded", "401 404")},
        OPENAPI_PATH: {"get": Op("getOpenApi", "200 OpenApi", "401")},
    },
    "orgs": {
        "/admin/orgs": {
            "post": Op("createOrg", "201 Org", "401 409 503", CreateOrg),
            "get": Op("listOrgs", "200 [Org]", _ADMIN),
        },
        "/admin/orgs/{org}": {
            "get": Op("getOrg", "200 Org", _FOUND),
            "patch": Op("updateOrg", "200 Org", _FOUND, UpdateOrg, optional_body=True),
        },
    },
    "keys": {
        "/admin/orgs/{org}/keys": {
            "post": Op("createKey", "201 NewKey", "401 403 404 503", CreateKey),
            "get": Op("listKeys", "200 [Key]", _FOUND),
        },
        "/admin/keys/{id}": {
            "get": Op("getKey", "200 Key", _FOUND),
            "patch": Op("updateKey", "200 Key", _FOUND, UpdateKey, optional_body=True),
        },
        "/admin/keys/{id}/revoke": {"post": Op("revokeKey", "200 Key", _FOUND)},
        "/admin/keys/{id}/rotate": {
            "post": Op("rotateKey", "201 NewKey", "401 403 404 409 503", RotateKey, True),
        },
    },
    "webhooks": {
        "/admin/orgs/{org}/webhooks": {
            "post": Op("createWebhook", "201 NewEndpoint", "401 403 404 503", CreateEndpoint),
            "get": Op("listWebhooks", "200 [Endpoint]", _FOUND),
        },
        "/admin/webhooks/{id}": {
            "get": Op("getWebhook", "200 Endpoint", _FOUND),
            "patch": Op("updateWebhook", "200 Endpoint", _FOUND, UpdateEndpoint, True),
            "delete": Op("deleteWebhook", "200 Deleted", _FOUND),
        },
        "/admin/webhooks/{id}/rotate": {
            "post": Op("rotateWebhookSecret", "201 NewEndpoint", _FOUND, RotateSecret, True),
        },
        "/admin/webhooks/{id}/ping": {"post": Op("pingWebhook", "202 Pinged", "401 404 409 503")},
        "/admin/webhooks/{id}/deliveries": {"get": Op("listDeliveries", "200 [Delivery]", _FOUND)},
        "/admin/deliveries/{id}": {"get": Op("getDelivery", "200 Delivery", _FOUND)},
        "/admin/deliveries/{id}/retry": {
            "post": Op("retryDelivery", "202 Delivery", "401 404 409 503"),
        },
    },
    "events": {
        "/admin/events": {"post": Op("publishEvent", "202 Published", _FOUND, PublishEvent)},
    },
    "activity": {
        "/admin/requests": {
            "get": Op(
                "listRequests",
                "200 [RequestLogEntry]",
                _FOUND,
                query=_REQUESTS,
                meta="Page",
            ),
        },
        "/admin/usage": {
            "get": Op("getUsage", "200 [UsageBucket]", _FOUND, query=_USAGE, meta="UsageMeta"),
        },
        "/admin/audit": {
            "get": Op("listAudit", "200 [AuditEntry]", _FOUND, query=_AUDIT, meta="Page"),
        },
    },
    DATA_PLANE_TAG: {
        IDENTITY: {"get": Op("getIdentity", "200 Identity", "401 403 429 503", meta=_OWN_META)},
        REQUEST_LOG: {
            "get": Op(
                "listOwnRequests",
                "200 [RequestLogEntry]",
                "401 403 429 503",
                query=_REQUESTS[1:],  # the org is the caller's
                meta="OwnPage",
            ),
        },
        WEBHOOKS: {
            "get": Op(
                "listOwnWebhooks", "200 [Endpoint]", "401 403 429 503", meta="ListMeta", limits=True
            ),
            "post": Op(
                "createOwnWebhook",
                "201 NewEndpoint",
                "401 403 429 503",
                CreateEndpoint,
                meta=_OWN_META,
                limits=True,
            ),
        },
        WEBHOOKS + "/{id}": {
            "get": Op("getOwnWebhook", "200 Endpoint", _OWN, meta=_OWN_META, limits=True),
            "patch": Op(
                "updateOwnWebhook",
                "200 Endpoint",
                _OWN,
                UpdateEndpoint,
                True,
                meta=_OWN_META,
                limits=True,
            ),
            "delete": Op("deleteOwnWebhook", "200 Deleted", _OWN, meta=_OWN_META, limits=True),
        },
        WEBHOOKS + "/{id}/rotate": {
            "post": Op(
                "rotateOwnWebhookSecret",
                "201 NewEndpoint",
                _OWN,
                RotateSecret,
                True,
                meta=_OWN_META,
                limits=True,
            ),
        },
        WEBHOOKS + "/{id}/ping": {
            "post": Op("pingOwnWebhook", "202 Pinged", "409 " + _OWN, meta=_OWN_META, limits=True),
        },
        WEBHOOKS + "/{id}/deliveries": {
            "get": Op("listOwnDeliveries", "200 [Delivery]", _OWN, meta=_OWN_META, limits=True),
        },
        WEBHOOKS + "/{id}/deliveries/{delivery}": {
            "get": Op("getOwnDelivery", "200 Delivery", _OWN, meta=_OWN_META, limits=True),
        },
        WEBHOOKS + "/{id}/deliveries/{delivery}/retry": {
            "post": Op(
                "retryOwnDelivery", "202 Delivery", "409 " + _OWN, meta=_OWN_META, limits=True
            ),
        },
        KEYS: {
            "get": Op("listOwnKeys", "200 [Key]", "401 403 429 503", meta=_OWN_META, limits=True),
            "post": Op(
                "createOwnKey",
                "201 NewKey",
                "401 403 409 429 503",
                OwnCreateKey,
                meta=_OWN_META,
                limits=True,
            ),
        },
        KEYS + "/{id}": {
            "get": Op("getOwnKey", "200 Key", _OWN, meta=_OWN_META, limits=True),
            "patch": Op(
                "renameOwnKey", "200 Key", "409 " + _OWN, OwnUpdateKey, meta=_OWN_META, limits=True
            ),
            "delete": Op("deleteOwnKey", "200 Key", "409 " + _OWN, meta=_OWN_META, limits=True),
        },
        KEYS + "/{id}/revoke": {
            "post": Op("revokeOwnKey", "200 Key", "409 " + _OWN, meta=_OWN_META, limits=True),
        },
        KEYS + "/{id}/rotate": {
            "post": Op(
                "rotateOwnKey",
                "201 NewKey",
                "409 " + _OWN,
                RotateKey,
                True,
                meta=_OWN_META,
                limits=True,
            ),
        },
    },
}
SUMMARIES = {
    "healthz": "Liveness",
    "readyz": "Readiness (503, with the same record, unless ready)",
    "metrics": "Prometheus metrics, in the text format",
    "getConfig": "The config in force, secrets redacted",
    "reloadConfig": "Read the config file again and switch to it",
    "getOpenApi": "This document",
    "createOrg": "Create an org",
    "listOrgs": "List the orgs",
    "getOrg": "Show an org",
    "updateOrg": "Change an org's name, plan or attributes",
    "createKey": "Create an API key; its secret is shown once",
    "listKeys": "List an org's keys",
    "getKey": "Show a key",
    "updateKey": "Rename a key, set its own rate limit (null: the plan's) or its attributes",
    "revokeKey": "Revoke a key",
    "rotateKey": "Replace a key; the old one works until the grace ends",
    "createWebhook": "Subscribe an endpoint to events; its secret is shown once",
    "listWebhooks": "List an org's webhook endpoints",
    "getWebhook": "Show a webhook endpoint",
    "updateWebhook": "Change, disable or enable an endpoint",
    "deleteWebhook": "Delete an endpoint",
    "rotateWebhookSecret": "A new signing secret; the old one signs too until the overlap ends",
    "pingWebhook": "Send a webhook.ping to this endpoint alone",
    "listDeliveries": "The endpoint's latest 100 deliveries, newest first",
    "getDelivery": "Show a delivery and its attempts",
    "retryDelivery": "Deliver once more, now",
    "publishEvent": "Publish an event to the org's subscribed endpoints",
    "listRequests": "The request log, newest first",
    "getUsage": "Requests, errors and refusals per minute or hour",
    "listAudit": "The audit log, newest first: who changed what",
    "renameOwnKey": "Rename a key of the key's org (limits and attributes are an admin's)",
    "deleteOwnKey": "Revoke a key of the key's org (as POST …/revoke)",
    "getIdentity": "Who the key belongs to, and its limits after this request",
    "listOwnWebhooks": "The key's org's webhook endpoints",
}
ERRORS = {
    400: "bad_request: the request is not valid HTTP/1.1 (any operation may answer so).",
    401: "unauthorized: the admin token (on the data plane: the API key) is missing or wrong.",
    403: "On the data plane: insufficient_scope, ip_not_allowed or api_access_disabled.",
    404: "not_found: there is no such record (route_not_found: no such path).",
    409: "conflict: the record's state does not allow it.",
    413: "payload_too_large: the body is over the limit (1 MiB; an event 256 KiB, an endpoint on"
    " the data plane 64 KiB).",
    429: "rate_limited: a limit of the key or its org; Retry-After says when to try again.",
    503: "unavailable: the state store is unavailable; try again shortly.",
}
_INVALID = (
    "bad_request: the body is not a JSON object, or a field or parameter is invalid (the"
    " message names each); or the request is not valid HTTP/1.1."
)
# What a status means for one operation, where it says more than ERRORS.
WHY = {
    ("reloadConfig", 400): "config_invalid: the file is invalid; the running config stays (or"
    " bad_request: the request is not valid HTTP/1.1).",
    ("reloadConfig", 404): "route_not_found: this process cannot reload.",
    ("createOrg", 409): "conflict: an org has this slug already.",
    ("createKey", 403): "api_access_disabled: the org's plan includes no API keys.",
    ("rotateKey", 403): "api_access_disabled: the org's plan includes no API keys.",
    ("createWebhook", 403): "plan_limit_reached: the plan's webhook_endpoints are used up.",
    ("createOwnKey", 403): "insufficient_scope: the caller lacks a scope it asked to grant;"
    " api_access_disabled: the org's plan includes no API keys.",
    ("rotateOwnKey", 403): "insufficient_scope: the key has a scope the caller lacks;"
    " key_not_grantable: it has other attributes or a limit of its own.",
    ("rotateOwnKey", 409): "conflict: the key is revoked, expired or rotated already, or the"
    " caller changed during the request.",
    ("rotateKey", 409): "conflict: the key is revoked, expired or rotated already.",
    ("createOwnWebhook", 403): "insufficient_scope, ...; plan_limit_reached: the plan's"
    " webhook_endpoints are used up.",
    ("pingWebhook", 409): "conflict: the endpoint is disabled.",
    ("pingOwnWebhook", 409): "conflict: the endpoint is disabled.",
    ("retryDelivery", 409): "conflict: an attempt of this delivery is in flight.",
    ("retryOwnDelivery", 409): "conflict: an attempt of this delivery is in flight.",
    ("publishEvent", 404): "not_found: there is no such org.",
}


def _response(status: int, description: str, content: Schema) -> Schema:
    headers = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WwwAuthenticate"}
    return {"description": description, "headers": headers, "content": content}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _summary(op_id: str) -> str:
    if op_id in SUMMARIES:
        return SUMMARIES[op_id]
    return SUMMARIES[op_id.replace("Own", "")] + ", in the key's org"  # the data plane's twin


def _operation(tag: str, path: str, op: Op) -> Schema:
    status, name = op.answer.split()
    data = listing(ref(name[1:-1])) if name.startswith("[") else ref(name)
    envelope = {"data": data} if op.meta is None else {"data": data, "meta": ref(op.meta)}
    if op.limits:
        envelope["limits"] = ref("Limits")
    answer = _json(record(envelope))
    if name == "text":
        answer = {"text/plain": {"schema": STRING}}
    elif name == "OpenApi":
        answer = _json(data)
    said = _summary(op.id)
    responses = {status: _response(int(status), said + ".", answer)}
    if op.id == "readyz":
        responses["503"] = _response(503, "Not ready: draining or degraded.", answer)
    errors = {400, *(int(code) for code in op.errors.split())} | ({413} if op.body else set())
    for code in sorted(errors):
        invalid = code == 400 and (op.body is not None or op.query)
        why = WHY.get((op.id, code), _INVALID if invalid else ERRORS[code])
        responses[str(code)] = _response(code, why, _json(ref("Error")))
    operation: Schema = {
        "operationId": op.id,
        "summary": said,
        "tags": [tag],
        "responses": responses,
    }
    segments = path.split("/")
    parameters = [
        PATH_PARAMETERS[f"{before}/{segment}"]
        for before, segment in pairwise(segments)
        if segment.startswith("{")
    ]
    parameters += [QUERY[name] for name in op.query]
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        body = _json(ref(op.body.__name__))
        operation["requestBody"] = {"required": not op.optional_body, "content": body}
    if tag == "health":
        operation["security"] = []  # public, for probes and scrapers
    elif tag == DATA_PLANE_TAG:
        operation["security"] = [{"apiKey": []}]
    return operation


DATA_LISTENER = {
    "url": "{origin}",
    "description": "The data listener (listen.host:listen.port, or whatever fronts it).",
    "variables": {"origin": {"default": "http://localhost:8080"}},
}


def build_openapi(config: GatewayConfig) -> dict[str, Any]:
    """The document for this config: its plans, identity fields and data-plane paths."""
    own = {
        IDENTITY: config.identity.path if config.identity.enabled else None,
        WEBHOOKS: config.webhooks.api_path,
        REQUEST_LOG: config.request_log.api_path,
        KEYS: None if config.keys.self_service is None else config.keys.self_service.path,
    }
    paths: dict[str, dict[str, Any]] = {}
    for tag, items in OPERATIONS.items():
        for template, methods in items.items():
            first, _, rest = template.partition("/")
            path = template
            if first in own:  # a data-plane path: where this config serves it, if anywhere
                if own[first] is None:
                    continue
                path = f"{own[first]}/{rest}".rstrip("/")
                paths[path] = {"servers": [DATA_LISTENER]}
            item = paths.setdefault(path, {})
            for method, op in methods.items():
                item[method] = operation = _operation(tag, template, op)
                # With an oauth section the org's own endpoints take access tokens too (keys
                # are managed with keys only).
                if config.oauth is not None and first in own and first != KEYS:
                    operation["security"] = [{"apiKey": []}, {"accessToken": []}]
    bearer = {"type": "http", "scheme": "bearer"}
    schemes: dict[str, Any] = {
        "adminToken": {**bearer, "description": "admin.token (or .gateway/admin-token)."},
        "apiKey": {**bearer, "description": "An API key (fw_live_…), on the data plane."},
    }
    if config.oauth is not None:
        schemes["accessToken"] = (
            {"type": "openIdConnect", "openIdConnectUrl": config.oauth.discovery_url}
            if config.oauth.discovery_url
            else {**bearer, "description": "An OAuth 2.1 access token (oauth), on the data plane."}
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway admin API",
            "version": "1",
            "description": "The admin listener's API; every /admin path needs the admin token."
            " Operations tagged 'data plane' are the gateway's own endpoints on the data"
            " listener, for an API key. Every error is"
            ' {"error": {"code", "message", "request_id"}}; besides those listed, a request'
            " head that is too large or too slow is answered 431 or 408.",
        },
        "tags": [{"name": tag} for tag in OPERATIONS],
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": {**record_schemas(config), **body_schemas(config)},
            "securitySchemes": schemes,
            "headers": {
                "RequestId": {
                    "description": "The request's id.",
                    "required": True,
                    "schema": STRING,
                },
                "WwwAuthenticate": {
                    "description": "The Bearer challenge.",
                    "required": True,
                    "schema": STRING,
                },
            },
        },
    }


class OpenApiDocument:
    """GET /admin/openapi.json: the document, built once for each config in force."""

    def __init__(self, config: GatewayConfig) -> None:
        self.set_config(config)

    def set_config(self, config: GatewayConfig) -> None:
        self.body = orjson.dumps(build_openapi(config))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(OPENAPI_PATH, self.serve)

    async def serve(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")
