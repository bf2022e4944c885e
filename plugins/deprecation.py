"""deprecation: RFC 9745 Deprecation, RFC 8594 Sunset and their links; 410 after the sunset."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import format_datetime
from typing import ClassVar

from aiohttp import web
from pydantic import Field, field_validator, model_validator
from yarl import URL

from gateway.config import GatewayConfig, GatewaySettings, RouteConfig, Section
from gateway.config.registry import register
from gateway.config.types import UtcDateTime
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from gateway.errors import GatewayError
from gateway.observability.metrics import Metrics


class DeprecationConfig(Section):
    deprecated_at: UtcDateTime = Field(description="When the route is (or was) deprecated.")
    sunset_at: UtcDateTime | None = Field(None, description="After this, the route answers 410.")
    link: str | None = Field(None, description="Where clients read about the deprecation.")
    successor: str | None = Field(None, description="The route that replaces this one.")

    @field_validator("link", "successor")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None:
            url = URL(value)
            if (
                url.scheme not in ("http", "https")
                or not url.host
                or any(c in value for c in '<> "')
            ):
                raise ValueError(f"must be an absolute http(s) URL (got {value!r})")
        return value

    @model_validator(mode="after")
    def _sunset_after_deprecation(self) -> DeprecationConfig:
        if self.sunset_at is not None and self.sunset_at <= self.deprecated_at:
            raise ValueError("sunset_at: must be after deprecated_at")
        return self


class DeprecationRoute(RouteConfig):
    deprecation: DeprecationConfig | None = Field(
        None, description="Deprecation and Sunset headers; 410 after the sunset."
    )


class Sunset(GatewayError):
    status, code = 410, "sunset"

    def __init__(self, when: str, successor: str | None) -> None:
        see = f" Use {successor} instead." if successor else ""
        super().__init__(f"This endpoint was retired on {when}.{see}")


@register
class DeprecationPlugin:
    """Tells every caller of a deprecated route, and counts them, so owners see who is left.

    The header values are fixed per route, so they are built once here.
    """

    name: ClassVar[str] = "deprecation"
    priority: ClassVar[int] = 1500  # before auth: a retired route is gone for everyone
    upstream_headers: ClassVar[tuple[str, ...]] = ()
    route_fields: ClassVar[type[RouteConfig] | None] = DeprecationRoute
    config_fields: ClassVar[type[GatewaySettings] | None] = None

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> DeprecationPlugin | None:
        if not isinstance(route, DeprecationRoute) or route.deprecation is None:
            return None
        return cls(route.deprecation, services.metrics, route.label, services.clock)

    def __init__(
        self,
        config: DeprecationConfig,
        metrics: Metrics,
        route_label: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.sunset_at = config.sunset_at.timestamp() if config.sunset_at else None
        self.successor = config.successor
        self._sunset_text = (
            format_datetime(config.sunset_at, usegmt=True) if config.sunset_at else ""
        )
        headers = [("Deprecation", f"@{int(config.deprecated_at.timestamp())}")]
        if config.sunset_at is not None:
            headers.append(("Sunset", self._sunset_text))
        if config.link:
            headers.append(("Link", f'<{config.link}>; rel="deprecation"; type="text/html"'))
        if config.successor:
            headers.append(("Link", f'<{config.successor}>; rel="successor-version"'))
        self.headers = tuple(headers)
        self._counter = metrics.deprecated_requests.labels(route_label)

    async def startup(self) -> None:
        """Nothing to prepare."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        self._counter.inc()
        ctx.log_fields["deprecated"] = True
        ctx.response_headers.extend(self.headers)
        if self.sunset_at is not None and self.clock() >= self.sunset_at:
            raise Sunset(self._sunset_text, self.successor)
        return await call_next(ctx)
