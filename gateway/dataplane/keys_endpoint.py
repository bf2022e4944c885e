"""Self-service keys (``keys.self_service.path``): a key manages its own org's keys.

Under the path:
    GET|POST /, GET|PATCH|DELETE /{id}, POST /{id}/revoke, POST /{id}/rotate.

A key may never make or renew a key more powerful than itself: every scope it grants it must
hold, a test key makes test keys, a key bound to addresses makes keys bound within them, and a
made or rotated key expires no later than its maker (so on a plan with key_ttl no key renews
itself for ever: an admin renews the keys that renew the others). Per-key limits and
attributes stay an admin's: a new key carries its maker's attributes (the role it acts in),
and asking for either is a 400.
DELETE /{id} revokes, like POST /{id}/revoke. Every successful answer carries the caller's
``limits``.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import orjson
from aiohttp import web

from gateway.api.bodies import B, parse_body
from gateway.api.keys_service import (
    CreateKey,
    KeyService,
    OwnCreateKey,
    OwnUpdateKey,
    RotateKey,
    UpdateKey,
    standing,
)
from gateway.api.limits import limits_view
from gateway.api.views import key_view
from gateway.dataplane.chain import RequestContext
from gateway.dataplane.request_body import read_body
from gateway.errors import (
    BadRequest,
    GatewayError,
    InsufficientScope,
    MethodNotAllowed,
    RouteNotFound,
    Unauthorized,
    Unavailable,
)
from gateway.http.headers import stamp
from gateway.keys.keyring import Identity
from gateway.keys.scopes import ScopePolicy
from gateway.store import ApiKey, Conflict, StoreError

_MAX_BODY = 64 * 1024
# Fields of the admin API's key bodies that a key may not set: its limit, its role.
_ADMINS_FIELDS = ("rateLimit", "attributes")


class KeyNotGrantable(GatewayError):
    """Rotating would hand the caller a secret for a key it could not have made itself."""

    status, code = 403, "key_not_grantable"


class KeyReplaced(Conflict):
    message = "This API key was replaced (rotatedTo); use its replacement."


class CallerChanged(Conflict):
    message = "This API key changed while the request was under way; send it again."


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SelfServiceKeysApi:
    """Terminal handler of the self-service routes; auth has checked the key and its scope."""

    def __init__(self, service: KeyService, scopes: ScopePolicy, body_timeout: float) -> None:
        self.service = service
        self.scopes = scopes  # the keyring's: what a granted scope implies
        self.body_timeout = body_timeout

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        identity = ctx.identity
        route = ctx.route
        if identity is None or route is None:
            raise Unauthorized()
        base = route.config.path.removesuffix("/{rest:.*}")
        parts = [p for p in ctx.path[len(base) :].split("/") if p]
        try:
            status, data = await self._route(identity, parts, ctx)
        except StoreError:
            raise Unavailable("The key store is unavailable; try again shortly.") from None
        plan = self.service.config.plans.get(identity.org.plan)
        body = orjson.dumps(
            {
                "data": data,
                "limits": limits_view(plan, identity.rate_limit),
                "meta": {"request_id": ctx.request_id},
            }
        )
        ctx.bytes_out = len(body)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        stamp(response.headers, ctx.request_id, ctx.response_headers)
        return response

    async def _body(self, ctx: RequestContext, model: type[B]) -> B:
        raw = await read_body(ctx, _MAX_BODY, self.body_timeout)
        with contextlib.suppress(orjson.JSONDecodeError):  # parse_body says what is wrong
            asked = orjson.loads(raw or b"{}")
            for field in _ADMINS_FIELDS:
                if isinstance(asked, dict) and field in asked:
                    raise BadRequest(f"{field}: set by an admin, not by a key")
        return parse_body(raw, model, {"now": self.service.clock()})

    async def _route(
        self, identity: Identity, parts: list[str], ctx: RequestContext
    ) -> tuple[int, Any]:
        s, org, method = self.service, identity.org, ctx.method
        own = _key_of(identity)
        actor = identity.actor
        match parts:
            case []:
                if method == "GET":
                    return 200, [key_view(k) for k in await s.store.list_keys(org.id)]
                if method == "POST":
                    asked = await self._body(ctx, OwnCreateKey)
                    await self._still(identity)
                    body = self._granted(identity, asked)
                    expires_by = own.expires_at
                    key, secret = await s.create(actor, org, body, expires_by=expires_by)
                    return 201, key_view(key, secret)
                raise MethodNotAllowed(["GET", "POST"])
            case [key_id]:
                if method == "GET":
                    return 200, key_view(await s.key(key_id, org.id))
                if method == "PATCH":
                    key = await s.key(key_id, org.id)
                    rename = await self._body(ctx, OwnUpdateKey)
                    await self._still(identity)
                    update = UpdateKey(name=rename.name)
                    return 200, key_view(await s.update(actor, key, update))
                if method == "DELETE":
                    await self._still(identity)
                    return 200, key_view(await s.revoke(actor, await s.key(key_id, org.id)))
                raise MethodNotAllowed(["GET", "PATCH", "DELETE"])
            case [key_id, "revoke"]:
                _only(method, "POST")
                await self._still(identity)
                return 200, key_view(await s.revoke(actor, await s.key(key_id, org.id)))
            case [key_id, "rotate"]:
                _only(method, "POST")
                old = await s.key(key_id, org.id)
                rotation = await self._body(ctx, RotateKey)
                await self._still(identity)
                if own.rotated_to is not None:
                    # A key in its grace renewing its own replacement would cut it short.
                    raise KeyReplaced()
                # Rotating hands out a new secret for the key: only for one the caller could make,
                # which includes the role it acts in and the limit it has.
                self._check_grantable(identity, old.scopes, old.environment, old.allowed_ips)
                _same_standing(own, old)
                new, secret = await s.rotate(actor, old, rotation.grace, expires_by=own.expires_at)
                return 201, key_view(new, secret)
        raise RouteNotFound()

    def _check_grantable(
        self,
        caller: Identity,
        scopes: tuple[str, ...],
        environment: str,
        networks: tuple[str, ...],
    ) -> None:
        """A key's scopes, environment and addresses within the caller's, or 403/400."""
        # SECURITY: what the scopes imply counts too: a scope the caller holds by a wildcard
        # may imply one it lacks.
        granted = self.scopes.expand(scopes)
        missing = sorted(scope for scope in granted if not ScopePolicy.covers(caller.scopes, scope))
        if missing:
            raise InsufficientScope(missing)
        if caller.environment == "test" and environment != "test":
            raise BadRequest("environment: a test key makes test keys only")
        if caller.networks:
            outside = _outside(networks, caller) if networks else ["any address"]
            if outside:
                raise BadRequest(
                    f"allowedIps: {', '.join(outside)} is outside this key's own allowed addresses"
                )

    async def _still(self, caller: Identity) -> None:
        """The caller as it is stored now: a key revoked, expired or changed while its request
        was under way (a body sent slowly) must not act on what it was."""
        own = _key_of(caller)
        current = await self.service.store.get_key(own.id)
        if current is None or not current.usable_at(self.service.clock()):
            raise Unauthorized()
        if standing(current) != standing(own) or current.expires_at != own.expires_at:
            raise CallerChanged()

    def _granted(self, caller: Identity, asked: OwnCreateKey) -> CreateKey:
        """The body a key may ask for: what it holds at most, its addresses and attributes
        inherited."""
        own = _key_of(caller)
        body = asked.as_create(dict(own.attributes), own.rate_limit)
        networks = body.allowedIps or own.allowed_ips
        self._check_grantable(caller, body.scopes, body.environment, networks)
        limit = own.expires_at
        if limit is not None and body.expiresAt is not None and body.expiresAt.timestamp() > limit:
            raise BadRequest("expiresAt: later than this key's own expiry")
        return body.model_copy(update={"allowedIps": networks})


def _key_of(caller: Identity) -> ApiKey:
    """The caller's key. Keys are managed with keys: the route takes no access token."""
    if caller.key is None:
        raise Unauthorized()
    return caller.key


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed([allowed])


def _same_standing(caller: ApiKey, key: ApiKey) -> None:
    if key.attributes != caller.attributes:
        raise KeyNotGrantable("This key acts with other attributes (a role) than the caller's.")
    if key.rate_limit != caller.rate_limit:
        raise KeyNotGrantable("This key has another rate limit of its own than the caller's.")


def _outside(networks: tuple[str, ...], caller: Identity) -> list[str]:
    """The networks not inside any of the caller's own."""
    return [
        text
        for text in networks
        if not any(
            _inside(ipaddress.ip_network(text, strict=False), own) for own in caller.networks
        )
    ]


def _inside(network: IPNetwork, own: IPNetwork) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(own, ipaddress.IPv4Network):
        return network.subnet_of(own)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(own, ipaddress.IPv6Network):
        return network.subnet_of(own)
    return False
