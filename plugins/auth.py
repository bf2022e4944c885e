"""auth: API keys as Bearer tokens; scopes, IP allowlists and identity headers for the backend."""

from __future__ import annotations

from typing import ClassVar

from aiohttp import web

from gateway.config import GatewayConfig, GatewaySettings, RouteConfig
from gateway.config.registry import register
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from gateway.errors import (
    ApiAccessDisabled,
    InsufficientScope,
    IpNotAllowed,
    NoScopes,
    Unauthorized,
    Unavailable,
)
from gateway.http.forwarded import address_in
from gateway.http.headers import IDENTITY_HEADERS, bearer_token
from gateway.keys.keyring import KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.store import StoreError


@register
class AuthPlugin:
    """Authenticates the key, then checks plan, client address and the route's scopes."""

    name: ClassVar[str] = "auth"
    priority: ClassVar[int] = 1000
    upstream_headers: ClassVar[tuple[str, ...]] = IDENTITY_HEADERS
    # What it reads of a route (auth, scopes) are the core's fields: it owns none.
    route_fields: ClassVar[type[RouteConfig] | None] = None
    config_fields: ClassVar[type[GatewaySettings] | None] = None

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> AuthPlugin | None:
        if route.auth != "key":
            return None
        return cls(
            services.keyring,
            services.scopes,
            required_scopes=route.scopes,
            plans_with_api_keys=frozenset(
                name for name, plan in config.plans.items() if plan.api_keys
            ),
            attribute_headers=tuple(config.identity.attribute_headers.items()),
        )

    def __init__(
        self,
        keyring: KeyRing,
        policy: ScopePolicy,
        *,
        required_scopes: tuple[str, ...],
        plans_with_api_keys: frozenset[str],
        attribute_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.keyring = keyring
        self.policy = policy
        self.required = required_scopes
        self.plans_with_api_keys = plans_with_api_keys
        self.attribute_headers = attribute_headers  # (attribute, header); the proxy strips them

    async def startup(self) -> None:
        """The key ring is shared by every route and owned by the process."""

    async def shutdown(self) -> None:
        """Nothing of its own to release."""

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        token = bearer_token(ctx.request.headers)
        if token is None:
            raise Unauthorized()
        try:
            identity = await self.keyring.resolve(token)
        except StoreError:
            # SECURITY/correctness: a key we could not check is not an invalid key.
            raise Unavailable(
                "The key store is unavailable; try again shortly.", headers=[("Retry-After", "1")]
            ) from None
        if identity is None:
            raise Unauthorized()
        # Logged from here on: a valid key refused below (scope, IP, plan) is its org's request.
        ctx.log_fields["org_id"] = identity.org.id
        ctx.log_fields["key_id"] = identity.key.id
        if identity.org.plan not in self.plans_with_api_keys:
            raise ApiAccessDisabled()
        if identity.networks and not address_in(ctx.client_ip, identity.networks):
            raise IpNotAllowed()
        if self.required:
            missing = self.policy.missing(identity.scopes, self.required)
            if missing:
                raise NoScopes(missing) if not identity.key.scopes else InsufficientScope(missing)
        ctx.identity = identity
        ctx.upstream_headers.update(identity.headers)
        for attribute, header in self.attribute_headers:
            value = identity.attributes.get(attribute)
            if value is not None:
                ctx.upstream_headers[header] = value
        return await call_next(ctx)
