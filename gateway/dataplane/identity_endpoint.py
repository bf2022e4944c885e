"""The identity endpoint (``GET /v1/me``): the gateway says who a key belongs to."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from gateway.config import IdentityConfig
from gateway.dataplane.chain import RequestContext
from gateway.errors import Unauthorized
from gateway.http.headers import stamp
from gateway.ratelimit.policy import Decision


def _limits(decision: Decision | None) -> dict[str, Any] | None:
    """The caller's limits after this request (None when its plan sets none)."""
    if decision is None:
        return None
    return {
        "policies": [
            {
                "name": o.policy,
                "limit": o.limit,
                "window": math.ceil(o.window),
                "remaining": o.remaining,
                "reset": math.ceil(o.reset),
            }
            for o in decision.outcomes
        ]
    }


class IdentityEndpoint:
    """Terminal handler of the identity route; its chain's auth plugin has set ctx.identity."""

    def __init__(self, config: IdentityConfig, *, tokens: bool = False) -> None:
        # (name in the answer, field, or the attribute shown at the top level), bound once.
        self._layout = tuple(
            (shown_as, field, field.removeprefix("attributes.") if "." in field else None)
            for field, shown_as in config.layout(tokens=tokens)
        )

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        identity = ctx.identity
        if identity is None:
            raise Unauthorized()
        key, org, token = identity.key, identity.org, identity.token
        fields: dict[str, Any] = {
            "apiKeyId": None if key is None else key.id,
            "keyName": None if key is None else key.name,
            "orgId": org.id,
            "orgName": org.name,
            "orgSlug": org.slug,
            "plan": org.plan,
            # A key's scopes as granted; a token's as it carries them (the identity's are
            # expanded by scopes.implies).
            "scopes": list(key.scopes) if key is not None else list(token.scopes if token else ()),
            "environment": identity.environment,
            "rateLimit": _limits(ctx.rate_limit),
            "attributes": dict(identity.attributes),
            "subject": None if token is None else token.subject,
            "clientId": None if token is None else token.client_id,
        }
        data = {
            shown_as: fields[field] if attribute is None else identity.attributes.get(attribute)
            for shown_as, field, attribute in self._layout
        }
        body = orjson.dumps({"data": data, "meta": {"request_id": ctx.request_id}})
        ctx.bytes_out = len(body)
        response = web.Response(body=body, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        stamp(response.headers, ctx.request_id, ctx.response_headers)
        return response
