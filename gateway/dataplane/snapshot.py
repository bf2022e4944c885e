"""An immutable, fully built view of one config: routes, chains, upstream pools."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.config import GatewayConfig, LoadedConfig, RouteConfig, UpstreamConfig
from gateway.config.errors import ERROR_CODES
from gateway.dataplane.chain import Handler, Plugin, build_chain
from gateway.dataplane.identity_endpoint import IdentityEndpoint
from gateway.dataplane.plugins import PluginServices, plugins_for
from gateway.dataplane.proxy import Proxy
from gateway.dataplane.router import Router
from gateway.dataplane.upstream import UpstreamPool
from gateway.dataplane.websocket import WebSocketMetrics, WebSocketProxy
from gateway.errors import Answer, ErrorMap
from gateway.http.forwarded import ForwardedResolver
from gateway.http.headers import IDENTITY_HEADERS
from gateway.observability.metrics import Metrics, RouteMetrics, UpstreamMetrics

WEBHOOKS_SCOPE = "webhooks:write"  # what a key needs to manage its org's webhook endpoints

log = structlog.get_logger("gateway.snapshot")


@dataclass(slots=True, frozen=True)
class CompiledRoute:
    config: RouteConfig
    label: str
    handler: Handler  # the plugin chain ending in the proxy
    metrics: RouteMetrics


class Snapshot:
    """Everything a request needs, built once per config; a reload builds a new one.

    Requests hold on to the snapshot they started with, so swapping the reference is atomic.
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        metrics: Metrics,
        *,
        builtin_targets: Mapping[str, Sequence[str]],
        services: PluginServices | None = None,
        webhook_api: Handler | None = None,
        request_log_api: Handler | None = None,
        keys_api: Handler | None = None,
        retired_headers: Sequence[str] = (),
    ) -> None:
        """Without ``services``, routes have no plugins at all. ``retired_headers`` are
        attribute headers an earlier config sent: still stripped from clients, since a backend
        may trust one until it is changed too."""
        config = loaded.config
        self.loaded = loaded
        self.config = config
        self.resolver = ForwardedResolver(config.trusted_proxies)
        self.error_map = error_map_of(config)
        self.request_id_prefix = config.ids.request
        self.upstreams: dict[str, UpstreamPool] = {}
        self.sandboxes: dict[str, UpstreamPool] = {}
        for name, upstream in config.upstreams.items():
            targets = builtin_targets[name] if upstream.builtin else upstream.targets
            self.upstreams[name] = _pool(name, targets, upstream, metrics)
            if upstream.sandbox:
                sandbox = f"{name}:sandbox"
                self.sandboxes[name] = _pool(sandbox, upstream.sandbox, upstream, metrics)
        self.plugins: list[Plugin] = []
        # The token checks of this config's oauth section: started and stopped with it.
        self.tokens = services.tokens if services is not None else None
        self._holds_tokens = False
        # The gateway's own routes that act for an org take its access tokens too; keys are
        # managed with keys only (a key made by a token would outlive the token).
        org_auth: str | list[str] = ["key", "oauth"] if config.oauth is not None else "key"
        identity_headers = (
            *IDENTITY_HEADERS,
            *config.identity.attribute_headers.values(),
            *retired_headers,
        )
        entries: list[tuple[str, Sequence[str] | None, str | None, CompiledRoute]] = []
        # Routes the gateway answers itself, behind the same plugins as any other.
        builtin: list[tuple[dict[str, Any], Handler]] = []
        if config.identity.enabled:
            route_spec = {
                "path": config.identity.path,
                "name": "identity",
                "methods": ["GET"],
                "auth": org_auth,
            }
            builtin.append(
                (route_spec, IdentityEndpoint(config.identity, tokens=config.oauth is not None))
            )
        api_path = config.webhooks.api_path
        if webhook_api is not None and api_path is not None:
            for path in (api_path, api_path + "/{rest:.*}"):
                route_spec = {
                    "path": path,
                    "name": "webhooks",
                    "scopes": [WEBHOOKS_SCOPE],
                    "auth": org_auth,
                }
                builtin.append((route_spec, webhook_api))
        self_service = config.keys.self_service
        if keys_api is not None and self_service is not None:
            for path in (self_service.path, self_service.path + "/{rest:.*}"):
                route_spec = {"path": path, "name": "keys", "scopes": [self_service.scope]}
                builtin.append((route_spec, keys_api))
        log_path = config.request_log.api_path
        if request_log_api is not None and log_path is not None:
            route_spec = {
                "path": log_path,
                "name": "request_log",
                "methods": ["GET"],
                "scopes": [config.request_log.scope],
                "auth": org_auth,
            }
            builtin.append((route_spec, request_log_api))

        # Each route's plugins come from the registry and read this config, the one being
        # built: a reload builds the new snapshot before the old config leaves.
        def plugins_of(route: RouteConfig) -> list[Plugin]:
            return plugins_for(route, config, services) if services is not None else []

        for route_spec, terminal in builtin:
            # With the plugins' fields too, so that each finds its defaults on these routes.
            route = config.route_model.model_validate({**route_spec, "upstream": ""})
            route_plugins = plugins_of(route)
            self.plugins.extend(route_plugins)
            compiled = CompiledRoute(
                config=route,
                label=route.label,
                handler=build_chain(route_plugins, terminal),
                metrics=RouteMetrics(metrics, route.label),
            )
            entries.append((route.path, route.methods, None, compiled))
        for route in config.routes:
            upstream_config = config.upstreams[route.upstream]
            route_plugins = plugins_of(route)
            self.plugins.extend(route_plugins)
            proxy = Proxy(
                self.upstreams[route.upstream],
                connect_timeout=_override(route.timeouts.connect, upstream_config.timeouts.connect),
                read_timeout=_override(route.timeouts.read, upstream_config.timeouts.read),
                body_timeout=config.server.body_timeout,
                max_body_size=route.max_body_size,
                sandbox=self.sandboxes.get(route.upstream),
                forward_authorization=route.forward_authorization,
                identity_headers=identity_headers,
                injected_headers=[name for p in route_plugins for name in p.upstream_headers],
                rules=route.headers,
            )
            end: Handler = proxy
            if route.websocket:
                end = WebSocketProxy(
                    proxy,
                    idle_timeout=route.timeouts.websocket_idle,
                    total_timeout=route.timeouts.websocket_total,
                    rules=route.headers,
                    metrics=WebSocketMetrics(metrics, route.label),
                )
            compiled = CompiledRoute(
                config=route,
                label=route.label,
                handler=build_chain(route_plugins, end),
                metrics=RouteMetrics(metrics, route.label),
            )
            entries.append((route.path, route.methods, route.host, compiled))
        self.router: Router[CompiledRoute] = Router(entries)
        self.inflight = 0
        self._retiring: asyncio.Event | None = None
        self.unmatched_metrics = RouteMetrics(metrics, "unmatched")

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._retiring is not None:
            self._retiring.set()

    async def retire(self, drain_timeout: float) -> None:
        """After a reload: let the requests that started here finish, then release it all.

        No new request enters a retired snapshot, so the wait ends when the last one does (a
        long download included); past drain_timeout it is logged, not cut.
        """
        self._retiring = asyncio.Event()
        if self.inflight:
            try:
                async with asyncio.timeout(drain_timeout):
                    await self._retiring.wait()
            except TimeoutError:
                log.info("snapshot_retiring_slowly", inflight=self.inflight)
                await self._retiring.wait()
        await self.shutdown()

    async def startup(self) -> None:
        for pool in [*self.upstreams.values(), *self.sandboxes.values()]:
            await pool.startup()
        if self.tokens is not None:
            await self.tokens.startup()
            self._holds_tokens = True
        for plugin in self.plugins:
            await plugin.startup()

    async def shutdown(self) -> None:
        """Release what startup took; safe after a partial startup."""
        for plugin in self.plugins:
            await plugin.shutdown()
        if self.tokens is not None and self._holds_tokens:
            self._holds_tokens = False
            await self.tokens.shutdown()  # shared with the next snapshot: let go of it once
        for pool in [*self.upstreams.values(), *self.sandboxes.values()]:
            await pool.shutdown()


def error_map_of(config: GatewayConfig) -> ErrorMap | None:
    """The config's error map, or None when every error is answered as ours."""
    if not config.errors:
        return None
    answers = {
        code: Answer(answer.status, answer.code, answer.message)
        for code, answer in config.errors.items()
    }
    return ErrorMap(answers, ERROR_CODES)


def _pool(
    name: str, targets: Sequence[str], config: UpstreamConfig, metrics: Metrics
) -> UpstreamPool:
    return UpstreamPool(
        name,
        targets,
        max_connections=config.max_connections,
        preserve_host=config.preserve_host,
        metrics=UpstreamMetrics(metrics, name),
        health=config.health,
        max_concurrency=config.max_concurrency,
        retry_budget=config.retry_budget,
        tls=config.tls,
    )


def _override(route_value: float | None, upstream_value: float) -> float:
    return upstream_value if route_value is None else route_value
