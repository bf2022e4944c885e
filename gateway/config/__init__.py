"""gateway.yaml: models, loading and validation."""

from gateway.config.loader import ConfigError, LoadedConfig, load_config, parse_config
from gateway.config.models import GatewayConfig, RouteConfig, UpstreamConfig

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "LoadedConfig",
    "RouteConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]
