"""auth: API keys and OAuth access tokens as Bearer tokens; scopes, IP allowlists and identity
headers for the backend."""

from __future__ import annotations

from typing import ClassVar

import structlog
from aiohttp import web

from gateway.config import GatewayConfig, GatewaySettings, RouteConfig
from gateway.config.registry import register
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from gateway.dataplane.token_callers import TokenCallers, TokenUnavailable
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
from gateway.keys.keyring import Identity, KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.oauth import InvalidToken
from gateway.oauth.tokens import MAX_TOKEN_SIZE
from gateway.observability.metrics import Metrics
from gateway.store import StoreError

log = structlog.get_logger("gateway.auth")

_KEY_LENGTH = 256  # longer than any key this gateway makes; a longer key is no key
# RFC 6750 error_description: one text for every reason, so nothing can be probed.
_REFUSAL_TEXT = "The access token is invalid or has expired"
_MESSAGES = {
    ("key",): "A valid API key is required.",
    ("oauth",): "A valid access token is required.",
    ("key", "oauth"): "A valid API key or access token is required.",
    ("oauth", "key"): "A valid API key or access token is required.",
}


@register
class AuthPlugin:
    """Authenticates the key or token, then checks plan, client address and the route's scopes."""

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
        credentials = route.credentials
        if not credentials:
            return None
        return cls(
            services.keyring,
            services.scopes,
            required_scopes=route.scopes,
            plans_with_api_keys=frozenset(
                name for name, plan in config.plans.items() if plan.api_keys
            ),
            plans=frozenset(config.plans),
            attribute_headers=tuple(config.identity.attribute_headers.items()),
            keys="key" in credentials,
            tokens=services.tokens if "oauth" in credentials else None,
            message=_MESSAGES[credentials],
            metrics=services.metrics,
        )

    def __init__(
        self,
        keyring: KeyRing,
        policy: ScopePolicy,
        *,
        required_scopes: tuple[str, ...],
        plans_with_api_keys: frozenset[str],
        plans: frozenset[str] = frozenset(),
        attribute_headers: tuple[tuple[str, str], ...] = (),
        keys: bool = True,
        tokens: TokenCallers | None = None,
        message: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.keyring = keyring
        self.policy = policy
        self.required = required_scopes
        self.plans_with_api_keys = plans_with_api_keys
        self.plans = plans  # every plan of the config: a token's org must be on one
        self.attribute_headers = attribute_headers  # (attribute, header); the proxy strips them
        self.keys = keys
        self.tokens = tokens
        self.message = message
        self.metrics = metrics
        # A token longer than MAX_TOKEN_SIZE is read, so that it is refused like any other bad
        # token (and logged why); the server's max_header_size bounds what arrives at all.
        self.max_length = 8 * MAX_TOKEN_SIZE if tokens is not None else _KEY_LENGTH

    async def startup(self) -> None:
        """The key ring and the token checks are shared by every route, owned by others."""

    async def shutdown(self) -> None:
        """Nothing of its own to release."""

    def _count(self, credential: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.count_auth(credential, outcome)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        secret = bearer_token(ctx.request.headers, max_length=self.max_length)
        if secret is None:
            self._count("none", "missing")
            raise Unauthorized(self.message)
        # Our keys start <prefix>_live_ (or as the key format says), which no access token of
        # the server's does: that tells them apart on a route that takes both. SECURITY: a
        # mistyped key is a key too: it is never sent to the authorization server.
        is_key = self.keyring.format.looks_like_key(secret) if self.tokens else self.keys
        if is_key:
            if not self.keys:
                # SECURITY: one of our keys is never sent on to the authorization server.
                self._count("key", "invalid")
                raise Unauthorized(self.message)
            identity = await self._key(ctx, secret)
        else:
            identity = await self._token(ctx, secret)
        if self.required:
            missing = self.policy.missing(identity.scopes, self.required)
            if missing:
                credential = "API key" if identity.key is not None else "access token"
                if not identity.scopes:
                    raise NoScopes(missing, credential=credential)
                raise InsufficientScope(missing, credential=credential)
        ctx.identity = identity
        ctx.upstream_headers.update(identity.headers)
        for attribute, header in self.attribute_headers:
            value = identity.attributes.get(attribute)
            if value is not None:
                ctx.upstream_headers[header] = value
        return await call_next(ctx)

    async def _key(self, ctx: RequestContext, secret: str) -> Identity:
        try:
            identity = await self.keyring.resolve(secret)
        except StoreError:
            self._count("key", "unavailable")
            # SECURITY/correctness: a key we could not check is not an invalid key.
            raise Unavailable(
                "The key store is unavailable; try again shortly.", headers=[("Retry-After", "1")]
            ) from None
        if identity is None or identity.key is None:
            self._count("key", "invalid")
            raise Unauthorized(self.message)
        self._count("key", "ok")
        # Logged from here on: a valid key refused below (scope, IP, plan) is its org's request.
        ctx.log_fields["org_id"] = identity.org.id
        ctx.log_fields["key_id"] = identity.key.id
        if identity.org.plan not in self.plans_with_api_keys:
            raise ApiAccessDisabled()
        if identity.networks and not address_in(ctx.client_ip, identity.networks):
            raise IpNotAllowed()
        return identity

    async def _token(self, ctx: RequestContext, token: str) -> Identity:
        tokens = self.tokens
        kind = tokens.kind_of(token) if tokens is not None else None
        if tokens is None or kind is None:
            self._count("key" if self.keys else "jwt", "invalid")
            ctx.log_fields["auth_error"] = "not a JWT, and no introspection is configured"
            raise Unauthorized(self.message, description=_REFUSAL_TEXT if tokens else None)
        try:
            identity = await tokens.resolve(token, kind)
        except InvalidToken as exc:
            self._count(kind, "invalid")
            # Why, for the operator (the access log line); the client is told nothing more.
            ctx.log_fields["auth_error"] = exc.reason[:200]
            raise Unauthorized(self.message, description=_REFUSAL_TEXT) from None
        except (TokenUnavailable, StoreError) as exc:
            self._count(kind, "unavailable")
            ctx.log_fields["auth_error"] = str(exc)[:200]
            # SECURITY/correctness: a token we could not check is not an invalid token.
            raise Unavailable(
                "The access token could not be checked; try again shortly.",
                headers=[("Retry-After", "1")],
            ) from None
        self._count(kind, "ok")
        bearer = identity.token
        ctx.log_fields["org_id"] = identity.org.id
        if identity.org.plan not in self.plans:
            # A plan a reload removed: no limits or quota to count against, so no access.
            raise ApiAccessDisabled()
        if bearer is not None:
            # The client, not the subject: a subject may be a person's email address.
            ctx.log_fields["client_id"] = bearer.client_id
        return identity
