"""The whole of gateway.yaml as the core reads it: its settings, then upstreams and routes."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from gateway.config.activity import AuditConfig, RequestLogConfig
from gateway.config.errors import ErrorAnswer, check_error_map
from gateway.config.ids import IdsConfig
from gateway.config.keys import DemoConfig, IdentityConfig, KeysConfig, ScopesConfig
from gateway.config.oauth import OAuthConfig
from gateway.config.plans import PlanConfig, RateLimitsConfig
from gateway.config.routes import RouteConfig
from gateway.config.section import Section
from gateway.config.server import (
    AdminConfig,
    ListenConfig,
    LogConfig,
    ReloadConfig,
    ServerConfig,
    StoreConfig,
)
from gateway.config.types import Network
from gateway.config.upstreams import UpstreamConfig
from gateway.config.webhooks import WebhooksConfig
from gateway.http.headers import normalize, strip_set


class GatewaySettings(Section):
    """Every top-level section of the core but upstreams and routes. A plugin with a top-level
    section of its own adds it by subclassing this (its ``config_fields``)."""

    listen: ListenConfig = Field(default_factory=ListenConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    workers: int = Field(1, ge=1, le=64, description="Processes sharing the data port.")
    store: StoreConfig = Field(default_factory=StoreConfig)
    trusted_proxies: tuple[Network, ...] = Field(
        (), description="Peers whose X-Forwarded-For/-Proto/-Host are believed."
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    plans: dict[str, PlanConfig] = Field(
        default_factory=lambda: {"default": PlanConfig()}, description="What orgs may subscribe to."
    )
    scopes: ScopesConfig = Field(default_factory=ScopesConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    ids: IdsConfig = Field(default_factory=IdsConfig)
    oauth: OAuthConfig | None = Field(
        None, description="The authorization server trusted for access tokens (auth: oauth)."
    )
    errors: dict[str, ErrorAnswer] = Field(
        default_factory=dict,
        description="Our error codes answered with another status, code or message, e.g."
        " insufficient_scope: {status: 401, code: unauthorized}; no_scopes for a key with none.",
    )
    demo: DemoConfig | None = Field(
        None, description="Make a demo org and key on first start and print the key (development)."
    )

    @field_validator("errors")
    @classmethod
    def _error_map(cls, value: dict[str, ErrorAnswer]) -> dict[str, ErrorAnswer]:
        return check_error_map(value)


class GatewayConfig(GatewaySettings):
    """The whole file: the settings, the plugins' top-level sections (composed in between, see
    gateway.config.registry), then upstreams and routes."""

    # The model of one route, plugins' fields included: the gateway's own routes are built
    # with it, so that each plugin finds its defaults there too.
    route_model: ClassVar[type[RouteConfig]] = RouteConfig

    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = Field(
        default=(), description="Matched literal paths first, then templates in file order."
    )

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        if self.workers > 1 and self.store.backend == "local":
            raise ValueError(
                "workers: the local store serves one process;"
                " use workers: 1 or store.backend: redis"
            )
        if not self.plans:
            raise ValueError("plans: define at least one plan")
        if (
            self.demo is not None
            and self.demo.plan is not None
            and self.demo.plan not in self.plans
        ):
            raise ValueError(
                f"demo: unknown plan {self.demo.plan!r} (known: {', '.join(self.plans)})"
            )
        for i, route in enumerate(self.routes):
            if "oauth" in route.credentials and self.oauth is None:
                raise ValueError(
                    f"routes: routes[{i}] takes OAuth tokens (auth: {route.auth_text}), and no"
                    " oauth section says which server to trust"
                )
        for i, route in enumerate(self.routes):
            if not route.credentials or route.cost == 1:
                continue
            for plan_name, plan in self.plans.items():
                for what, capacity in plan.capacities():
                    if route.cost > capacity:
                        raise ValueError(
                            f"routes: routes[{i}].cost {route.cost} is more than plan"
                            f" {plan_name!r} allows at once ({what}: {capacity}); such a request"
                            " could never pass"
                        )
        if self.identity.enabled:
            for i, route in enumerate(self.routes):
                takes_get = route.methods is None or "GET" in route.methods
                if route.path == self.identity.path and takes_get:
                    raise ValueError(
                        f"routes: routes[{i}] takes GET {route.path}, which identity.path answers;"
                        " move one of them or set identity.enabled: false"
                    )
        sent = strip_set(self.identity.attribute_headers.values())
        for i, route in enumerate(self.routes):
            rules = route.headers.request
            for name in [*rules.set, *rules.add, *rules.remove]:
                if normalize(name) in sent:
                    raise ValueError(
                        f"routes: routes[{i}].headers.request names {name}, which"
                        " identity.attribute_headers sends; it cannot be changed by a rule"
                    )
        self_service = self.keys.self_service
        own = (
            ("webhooks.api_path", self.webhooks.api_path),
            ("request_log.api_path", self.request_log.api_path),
            ("keys.self_service.path", self_service.path if self_service else None),
        )
        for field, api_path in own:
            if api_path is None:
                continue
            off = f"{field}: null" if field.endswith("api_path") else "keys.self_service: null"
            for i, route in enumerate(self.routes):
                if route.path == api_path or route.path.startswith(api_path + "/"):
                    raise ValueError(
                        f"routes: routes[{i}] path {route.path} is under {field}"
                        f" ({api_path}); move one of them or set {off}"
                    )
        # The identity endpoint is one path; the others take every path under theirs too.
        taken: list[tuple[str, str, bool]] = []
        if self.identity.enabled:
            taken.append(("identity.path", self.identity.path, False))
        for field, api_path in own:
            if api_path is None:
                continue
            for other, path, has_subpaths in taken:
                nested = api_path.startswith(path + "/") and has_subpaths
                if api_path == path or nested or path.startswith(api_path + "/"):
                    raise ValueError(
                        f"{field}: {api_path} overlaps {other} ({path}); give each its own"
                    )
            taken.append((field, api_path, True))
        return self

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", name):
                raise ValueError(f"upstream name {name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        return value
