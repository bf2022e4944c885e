"""The admin API's records, bodies and parameters as JSON Schema 2020-12 (OpenAPI 3.1's).

Bodies come from the pydantic models the handlers parse; records mirror the views
(gateway/api/views.py, gateway/webhooks/service.py). The schemathesis test holds both true.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.api.bodies import Body
from gateway.api.keys_service import CreateKey, OwnCreateKey, OwnUpdateKey, RotateKey, UpdateKey
from gateway.config import GatewayConfig
from gateway.config.types import SCOPE
from gateway.control.orgs_api import CreateOrg, UpdateOrg
from gateway.webhooks.service import CreateEndpoint, PublishEvent, RotateSecret, UpdateEndpoint

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
OBJECT_OR_NULL: Schema = {"type": ["object", "null"]}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def listing(item: Schema) -> Schema:
    return {"type": "array", "items": item}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def record(
    properties: dict[str, Schema], *, others: bool = False, optional: tuple[str, ...] = ()
) -> Schema:
    """An object with these properties, all present but the optional ones; others only if it
    says so."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": others,
    }


# -- bodies ------------------------------------------------------------------------------------

BODIES: tuple[type[Body], ...] = (
    CreateOrg,
    UpdateOrg,
    CreateKey,
    UpdateKey,
    RotateKey,
    OwnCreateKey,
    OwnUpdateKey,
    CreateEndpoint,
    UpdateEndpoint,
    RotateSecret,
    PublishEvent,
)

# What the bodies' validators check beyond their models' JSON Schema, stated as JSON Schema:
# (model, field, what is added to the field's non-null branch). A field that is gone fails
# the build, so this cannot outlive the code it describes. What no JSON Schema can say (an
# expiry in the future, a duration's bounds when it is written as text, a limit that must
# refill within a year) is said in the descriptions and answered 400.
_EVENT_TYPE: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"}
_EVENTS: Schema = {
    "items": {"anyOf": [{"const": "*"}, _EVENT_TYPE]},
    "minItems": 1,
    "maxItems": 100,
}
_URL: Schema = {
    "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,4})?(/[A-Za-z0-9._~/-]*)?$",
    "maxLength": 2048,
}
_BYTE = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_NETWORK: Schema = {
    "anyOf": [
        {"type": "string", "format": "ipv4"},
        {"type": "string", "format": "ipv6"},
        {"type": "string", "pattern": f"^({_BYTE}\\.){{3}}{_BYTE}/(3[0-2]|[12]?[0-9])$"},
    ],
    "description": "An IP address or CIDR range, e.g. 10.0.0.0/8.",
}
_FILTERS: Schema = {  # gateway/webhooks/service.py _check_filters
    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
    "maxProperties": 10,
    "additionalProperties": {
        "type": "array",
        "minItems": 1,
        "maxItems": 100,
        "items": {**STRING, "minLength": 1, "maxLength": 200},
    },
}
REFINEMENTS: tuple[tuple[type[Body], str, Schema], ...] = (
    (CreateOrg, "slug", {"pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"}),
    (CreateKey, "scopes", {"items": {**STRING, "pattern": SCOPE.pattern, "maxLength": 100}}),
    (CreateKey, "allowedIps", {"items": _NETWORK}),
    (OwnCreateKey, "scopes", {"items": {**STRING, "pattern": SCOPE.pattern, "maxLength": 100}}),
    (OwnCreateKey, "allowedIps", {"items": _NETWORK}),
    (CreateEndpoint, "url", _URL),
    (CreateEndpoint, "events", _EVENTS),
    (UpdateEndpoint, "url", _URL),
    (UpdateEndpoint, "events", _EVENTS),
    (CreateEndpoint, "filters", _FILTERS),
    (UpdateEndpoint, "filters", _FILTERS),
    (PublishEvent, "type", _EVENT_TYPE),
)


def body_schemas(config: GatewayConfig) -> dict[str, Schema]:
    """Each body model's schema by its name (and the models they use), refined."""
    _, top = models_json_schema(
        [(model, "validation") for model in BODIES], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Schema] = top["$defs"]
    plans = {"enum": sorted(config.plans), "description": "One of the config's plans."}
    refinements: tuple[tuple[type[Body], str, Schema], ...] = (
        *REFINEMENTS,
        (CreateOrg, "plan", plans),
        (UpdateOrg, "plan", plans),
    )
    for model, field, extra in refinements:
        target = schemas[model.__name__]["properties"][field]
        branches = [b for b in target.get("anyOf", [target]) if b.get("type") != "null"]
        branches[0].update(copy.deepcopy(extra))
    return schemas


# -- records -----------------------------------------------------------------------------------

_ATTRIBUTES: Schema = {
    "type": "object",
    "additionalProperties": STRING,
    "description": 'Free-form metadata, e.g. {"role": "sales-manager"}.',
}
_ORG = {
    "id": STRING,
    "slug": STRING,
    "name": STRING,
    "plan": STRING,
    "createdAt": TIME,
    "attributes": _ATTRIBUTES,
}
_KEY_LIMIT = {
    "type": "object",
    "properties": {
        "requests": INTEGER,
        "per": NUMBER,
        "burst": INTEGER,
        "algorithm": {"enum": ["token_bucket", "sliding_window"]},
    },
    "description": "The key's own rate limit (per in seconds; algorithm shown when it is"
    " sliding_window); null: its plan's.",
}
_KEY = {
    "name": STRING,
    "scopes": listing(STRING),
    "environment": STRING,
    "orgId": STRING,
    "prefix": STRING,
    "last4": STRING,
    "allowedIps": listing(STRING),
    "createdAt": TIME,
    "expiresAt": nullable(TIME),
    "lastUsedAt": nullable(TIME),
    "revokedAt": nullable(TIME),
    "rotatedTo": nullable(STRING),
    "rateLimit": nullable(_KEY_LIMIT),
    "attributes": _ATTRIBUTES,
}
_ENDPOINT = {
    "orgId": STRING,
    "url": STRING,
    "events": listing(STRING),
    "filters": {"type": "object", "additionalProperties": listing(STRING)},
    "description": STRING,
    "status": {"enum": ["enabled", "disabled"]},
    "disabledReason": nullable(STRING),
    "secretRotating": BOOLEAN,
    "createdAt": TIME,
    "updatedAt": nullable(TIME),
}
_SECRET = {"secret": {**STRING, "description": "Shown in this answer only."}}
_ATTEMPT = {
    "attempt": INTEGER,
    "at": TIME,
    "status": nullable(INTEGER),
    "durationMs": NUMBER,
    "success": BOOLEAN,
    "error": nullable(STRING),
    "response": STRING,
}
_DELIVERY = {
    "id": STRING,
    "endpointId": STRING,
    "eventId": STRING,
    "eventType": STRING,
    "status": {"enum": ["pending", "delivering", "succeeded", "dead"]},
    "attempts": INTEGER,
    "lastStatus": nullable(INTEGER),
    "nextAttemptAt": nullable(TIME),
    "createdAt": TIME,
    "updatedAt": nullable(TIME),
    "history": listing(ref("Attempt")),
}
_REQUEST_LOG_ENTRY = {
    "time": TIME,
    "requestId": STRING,
    "orgId": nullable(STRING),
    "keyId": nullable(STRING),
    "method": STRING,
    "path": STRING,
    "route": nullable(STRING),
    "status": INTEGER,
    "durationMs": NUMBER,
    "upstreamMs": nullable(NUMBER),
    "clientIp": STRING,
    "userAgent": nullable(STRING),
    "upstream": nullable(STRING),
    "rateLimited": nullable(BOOLEAN),
    "idempotency": nullable(STRING),
    "clientId": nullable(STRING),
}
_AUDIT_ENTRY = {
    "id": STRING,
    "time": TIME,
    "actor": STRING,
    "action": STRING,
    "target": nullable(STRING),
    "orgId": nullable(STRING),
    "before": OBJECT_OR_NULL,
    "after": OBJECT_OR_NULL,
}
_POLICY = {"name": STRING, "limit": INTEGER, "window": INTEGER, "remaining": INTEGER}
_IDENTITY = {
    "apiKeyId": STRING,
    "keyName": STRING,
    "orgId": STRING,
    "orgName": STRING,
    "orgSlug": STRING,
    "plan": STRING,
    "scopes": listing(STRING),
    "environment": STRING,
    "rateLimit": nullable(record({"policies": listing(record({**_POLICY, "reset": INTEGER}))})),
    "attributes": {
        **_ATTRIBUTES,
        "description": "The org's attributes, and the key's own in their place.",
    },
}
_CONFIG = {"hash": STRING, "source": STRING, "config": {"type": "object"}}
_LIMITS: Schema = {**OBJECT_OR_NULL, "description": "The caller's limits (free-form for now)."}
_LIMIT_STATE = {
    "policy": STRING,
    "limit": INTEGER,
    "windowSeconds": NUMBER,
    "remaining": INTEGER,
    "resetSeconds": NUMBER,
}
_USAGE_LIMITS: Schema = nullable(
    record(
        {
            "plan": STRING,
            "state": nullable(listing(record(_LIMIT_STATE))),
            "rateLimit": OBJECT_OR_NULL,
            "orgRateLimit": OBJECT_OR_NULL,
            "quota": OBJECT_OR_NULL,
            "keyRateLimit": OBJECT_OR_NULL,
        },
        optional=("rateLimit", "orgRateLimit", "quota", "keyRateLimit"),
    )
)


def record_schemas(config: GatewayConfig) -> dict[str, Schema]:
    """The answers' records, and the metas and errors around them."""
    tokens = config.oauth is not None
    # A token has no key: its apiKeyId and keyName are null.
    keyless = {"apiKeyId", "keyName"} if tokens else set()
    identity = {
        shown_as: _IDENTITY[field]
        if field in _IDENTITY and field not in keyless
        else nullable(STRING)
        for field, shown_as in config.identity.layout(tokens=tokens)
    }
    status = {"enum": ["ready", "draining", "degraded"]}
    return {
        "Error": record(
            {"error": record({"code": STRING, "message": STRING, "request_id": STRING})}
        ),
        "Org": record(_ORG),
        "Key": record({"id": STRING, **_KEY}),
        "NewKey": record({"id": STRING, **_SECRET, **_KEY}),
        "Endpoint": record({"id": STRING, **_ENDPOINT}),
        "NewEndpoint": record({"id": STRING, **_SECRET, **_ENDPOINT}),
        "Deleted": record({"id": STRING, "deleted": {"const": True}}),
        "Pinged": record({"eventId": STRING}),
        "Published": record({"id": STRING}),
        "Attempt": record(_ATTEMPT),
        "Delivery": record(_DELIVERY),
        "RequestLogEntry": record(_REQUEST_LOG_ENTRY),
        "UsageBucket": record(
            {"start": TIME, "requests": INTEGER, "errors": INTEGER, "rateLimited": INTEGER}
        ),
        "AuditEntry": record(_AUDIT_ENTRY),
        "Identity": record(identity),
        "Health": record({"status": {"const": "ok"}}),
        "Readiness": record({"status": status}, others=True),
        "Config": record(_CONFIG),
        "Reloaded": record({"reloaded": {"const": True}, **_CONFIG}),
        "OpenApi": record({"openapi": STRING, "paths": {"type": "object"}}, others=True),
        # metas
        "RequestMeta": record({"request_id": STRING}),
        "ListMeta": record({"request_id": STRING, "limits": _LIMITS}),
        "Limits": record(
            {
                "requestsPerMinute": nullable(NUMBER),
                "burst": nullable(INTEGER),
                "orgRequestsPerMinute": nullable(NUMBER),
                "quota": nullable(INTEGER),
                "quotaPeriod": nullable({"enum": ["day", "month"]}),
                "webhookEndpoints": nullable(INTEGER),
            }
        ),
        "Page": record({"next_cursor": nullable(STRING)}),
        "OwnPage": record({"next_cursor": nullable(STRING), "request_id": STRING}),
        "UsageMeta": record({"bucket": {"enum": ["minute", "hour"]}, "limits": _USAGE_LIMITS}),
    }


# -- parameters --------------------------------------------------------------------------------


def param(name: str, where: str, description: str, schema: Schema = STRING) -> Schema:
    if where == "path":
        schema = {**schema, "minLength": 1}
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


# By the segment before it and its name; WEBHOOKS and KEYS stand for webhooks.api_path and
# keys.self_service.path (openapi.py).
PATH_PARAMETERS = {
    "orgs/{org}": param("org", "path", "The org's id (org_…) or slug."),
    "keys/{id}": param("id", "path", "The key's id (key_…)."),
    "webhooks/{id}": param("id", "path", "The webhook endpoint's id (wh_…)."),
    "WEBHOOKS/{id}": param("id", "path", "The webhook endpoint's id (wh_…)."),
    "KEYS/{id}": param("id", "path", "The key's id (key_…), of the caller's org."),
    "deliveries/{id}": param("id", "path", "The delivery's id (dlv_…)."),
    "deliveries/{delivery}": param("delivery", "path", "The delivery's id (dlv_…)."),
}
_NAME = {**STRING, "pattern": "^[A-Za-z0-9_.:/{}*-]{1,200}$"}  # gateway/api/activity.py
QUERY = {
    "org": param("org", "query", "Only this org's (its id or slug)."),
    "key": param("key", "query", "Only this key's (its id).", _NAME),
    "route": param("route", "query", "Only this route's (its name).", _NAME),
    "status": param(
        "status",
        "query",
        "A status (404) or a class (4xx).",
        {**STRING, "pattern": "^[1-5]([0-9]{2}|[xX]{2})$"},
    ),
    "since": param("since", "query", "RFC 3339: from this time on (inclusive).", TIME),
    "until": param("until", "query", "RFC 3339: before this time (exclusive).", TIME),
    "limit": param(
        "limit",
        "query",
        "At most this many.",
        {**INTEGER, "minimum": 1, "maximum": 1000, "default": 100},
    ),
    "cursor": param("cursor", "query", "The previous page's meta.next_cursor."),
    "bucket": param(
        "bucket", "query", "The bucket size.", {"enum": ["minute", "hour"], "default": "minute"}
    ),
    "action": param("action", "query", "Only this action (org.create, key.revoke, …).", _NAME),
}
