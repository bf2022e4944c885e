"""Building a route's plugins from the registry: what a plugin class offers the data plane, and
the services the process lends it.

The registry (gateway.config.registry) knows each plugin's name and the config fields it owns;
here each registered class is asked to build itself for one route, once per config snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeGuard

from gateway.config import GatewayConfig, PluginSpec, RouteConfig
from gateway.config.registry import REGISTRY
from gateway.dataplane.chain import Plugin
from gateway.dataplane.token_callers import TokenCallers
from gateway.keys.keyring import KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.observability.metrics import Metrics
from gateway.ratelimit.limiter import RateLimiter
from gateway.store import Store


@dataclass(frozen=True, slots=True)
class PluginServices:
    """What the process lends the plugins it builds. The process owns each of these (starts and
    stops them); a plugin only uses them."""

    store: Store
    keyring: KeyRing
    scopes: ScopePolicy
    metrics: Metrics
    limiter: RateLimiter | None = None  # None: the process limits nothing
    tokens: TokenCallers | None = None  # the snapshot's, when its config has an oauth section
    clock: Callable[[], float] = time.time


class PluginClass(PluginSpec, Plugin, Protocol):
    """A registered plugin class as the data plane uses it: its instances are chain members."""

    upstream_headers: ClassVar[tuple[str, ...]]

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> Plugin | None:
        """The plugin for this route of this config, or None when the route does not need it.

        ``config`` is the one being built (not the one in force), so read everything from it.
        """
        ...


def plugins_for(
    route: RouteConfig, config: GatewayConfig, services: PluginServices
) -> list[Plugin]:
    """Every registered plugin this route needs, built for it."""
    plugins = []
    for spec in REGISTRY.plugins():
        if not _buildable(spec):
            raise TypeError(f"plugin {spec.name!r} ({spec.__module__}) has no build()")
        plugin = spec.build(route, config, services)
        if plugin is not None:
            plugins.append(plugin)
    return plugins


def _buildable(spec: type[PluginSpec]) -> TypeGuard[type[PluginClass]]:
    # The registry sits below the data plane and cannot name its types: the one check of the
    # capability, where it is used.
    return callable(getattr(spec, "build", None))
