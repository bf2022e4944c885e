"""gateway.yaml: models, loading and validation, and the plugin registry the models come from."""

from gateway.config.keys import (
    IDENTITY_FIELDS,
    DemoConfig,
    IdentityConfig,
    KeysConfig,
    ScopesConfig,
)
from gateway.config.loader import ConfigError, LoadedConfig, load_config, parse_config
from gateway.config.plans import (
    MAX_QUOTA,
    MAX_REQUESTS,
    PlanConfig,
    QuotaConfig,
    RateLimitConfig,
    RateLimitsConfig,
)
from gateway.config.registry import PluginSpec, config_model
from gateway.config.root import GatewayConfig, GatewaySettings
from gateway.config.routes import HeaderRulesConfig, HeaderRuleSet, RouteConfig, RouteTimeoutsConfig
from gateway.config.section import Section
from gateway.config.server import (
    AdminConfig,
    AdminTokenConfig,
    ListenConfig,
    LogConfig,
    ReloadConfig,
    ServerConfig,
    StoreConfig,
)
from gateway.config.upstreams import (
    HealthConfig,
    TimeoutsConfig,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from gateway.config.webhooks import WebhooksConfig

__all__ = [
    "IDENTITY_FIELDS",
    "MAX_QUOTA",
    "MAX_REQUESTS",
    "AdminConfig",
    "AdminTokenConfig",
    "ConfigError",
    "DemoConfig",
    "GatewayConfig",
    "GatewaySettings",
    "HeaderRuleSet",
    "HeaderRulesConfig",
    "HealthConfig",
    "IdentityConfig",
    "KeysConfig",
    "ListenConfig",
    "LoadedConfig",
    "LogConfig",
    "PlanConfig",
    "PluginSpec",
    "QuotaConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
    "ReloadConfig",
    "RouteConfig",
    "RouteTimeoutsConfig",
    "ScopesConfig",
    "Section",
    "ServerConfig",
    "StoreConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
    "UpstreamTlsConfig",
    "WebhooksConfig",
    "config_model",
    "load_config",
    "parse_config",
]
