"""cors: preflights answered before auth; CORS headers only for listed origins."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar

from aiohttp import web
from pydantic import Field, field_validator, model_validator

from gateway.config import GatewayConfig, GatewaySettings, RouteConfig, Section
from gateway.config.registry import register, sections
from gateway.config.types import DAY, DurationRange
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from gateway.errors import GatewayError
from gateway.http.headers import RATE_LIMIT_HEADERS, REQUEST_ID, stamp

# What browser code may read from our answers.
EXPOSED = ", ".join(
    [
        REQUEST_ID,
        *RATE_LIMIT_HEADERS,
        "Retry-After",
        "Idempotent-Replayed",
        "Deprecation",
        "Sunset",
        "Link",
    ]
)


class CorsRefused(GatewayError):
    status, code = 403, "cors_not_allowed"
    message = "This origin, method or header is not allowed by the API's CORS policy."


_ORIGIN = re.compile(r"^https?://(\*\.)?[a-z0-9.-]+(:\d{1,5})?$")


class CorsConfig(Section):
    origins: tuple[str, ...] = Field(
        (), description="Allowed origins: https://app.example.com, https://*.example.com or *."
    )
    methods: tuple[str, ...] = Field(
        ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"), description="Methods browsers may use."
    )
    headers: tuple[str, ...] = Field(
        ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"),
        description="Request headers browsers may send.",
    )
    max_age: Annotated[float, DurationRange(most=DAY)] = Field(
        600.0, description="How long browsers may cache a preflight; at most 1d."
    )
    credentials: bool = Field(False, description="Allow cookies and HTTP auth from browsers.")

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"not an origin: {origin!r} (scheme://host[:port], lower case, no path;"
                    " a leading *. for subdomains)"
                )
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in value)

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.credentials and "*" in self.origins:
            raise ValueError("origins: '*' cannot be used with credentials: true (browsers refuse)")
        return self


class CorsRoute(RouteConfig):
    cors: CorsConfig | None = Field(
        None, description="This route's CORS (default: the global cors)."
    )


class CorsSettings(GatewaySettings):
    cors: CorsConfig = Field(
        default_factory=CorsConfig,
        description="Browser access; no origin is allowed unless listed (Bearer APIs are"
        " server-to-server by default).",
    )


@register
class CorsPlugin:
    """Everything is decided from a policy compiled once per route.

    A preflight (the data plane routes it by the method it asks about) is answered here.
    """

    name: ClassVar[str] = "cors"
    priority: ClassVar[int] = 2000  # outermost: a preflight never needs a key
    upstream_headers: ClassVar[tuple[str, ...]] = ()
    route_fields: ClassVar[type[RouteConfig] | None] = CorsRoute
    config_fields: ClassVar[type[GatewaySettings] | None] = CorsSettings

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> CorsPlugin:
        """Every route has one: its own policy, else the global one (by default, none)."""
        own = route.cors if isinstance(route, CorsRoute) else None
        settings = sections(config, CorsSettings)
        return cls(own or (settings.cors if settings is not None else CorsConfig()))

    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = "*" in config.origins
        self.exact = frozenset(o for o in config.origins if "*" not in o)
        self.patterns = tuple(
            re.compile(re.escape(o).replace(r"\*\.", r"[a-z0-9-]+(?:\.[a-z0-9-]+)*\.") + r"\Z")
            for o in config.origins
            if o.startswith(("http://*.", "https://*."))
        )
        self.enabled = bool(config.origins)
        self.credentials = config.credentials
        self.methods = frozenset(config.methods)
        self.allow_methods = ", ".join(config.methods)
        self.headers = frozenset(h.lower() for h in config.headers)
        self.allow_headers = ", ".join(config.headers)
        self.max_age = str(math.ceil(config.max_age))

    async def startup(self) -> None:
        """Nothing to prepare."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    def allowed(self, origin: str) -> bool:
        origin = origin.lower()
        if self.any_origin or origin in self.exact:
            return True
        return any(p.match(origin) for p in self.patterns)

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        value = "*" if self.any_origin and not self.credentials else origin
        headers = [("Access-Control-Allow-Origin", value)]
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        origin = request.headers.get("Origin")
        if ctx.preflight:
            return self._preflight(ctx, origin or "")
        if self.enabled:
            ctx.response_headers.append(("Vary", "Origin"))
            if origin is not None and self.allowed(origin):
                ctx.response_headers.extend(self._origin_headers(origin))
                ctx.response_headers.append(("Access-Control-Expose-Headers", EXPOSED))
        return await call_next(ctx)

    def _preflight(self, ctx: RequestContext, origin: str) -> web.StreamResponse:
        request = ctx.request
        method = request.headers.get("Access-Control-Request-Method", "").upper()
        wanted = [
            h.strip().lower()
            for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
            if h.strip()
        ]
        vary = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        # SECURITY: an unlisted origin gets no CORS headers at all, so the browser stops there.
        if not (self.enabled and self.allowed(origin) and method in self.methods):
            raise CorsRefused(headers=[vary])
        if any(h not in self.headers for h in wanted):
            raise CorsRefused(headers=[vary])
        response = web.Response(status=204)
        headers = response.headers
        for name, value in self._origin_headers(origin):
            headers[name] = value
        headers["Access-Control-Allow-Methods"] = self.allow_methods
        headers["Access-Control-Allow-Headers"] = self.allow_headers
        headers["Access-Control-Max-Age"] = self.max_age
        headers.add(*vary)
        stamp(headers, ctx.request_id, ())
        return response
