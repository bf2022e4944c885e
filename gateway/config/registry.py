"""The plugin registry: every request plugin by name, found in the top-level ``plugins``
package, and the config model composed of the core's fields and those each plugin owns.

A plugin class names the fields it owns as subclasses of the core's models: ``route_fields``
(of RouteConfig: keys of ``routes[]``) and ``config_fields`` (of GatewaySettings: top-level
sections). The loader validates with the composed model, so a plugin's fields get the same
error paths, "did you mean" hints and JSON Schema as the core's, and reading them back is
typed: ``isinstance(route, CorsRoute)``. The registry lives beside the config, the lowest
layer, because the config is the first to need it; the data plane builds plugins from it
(gateway.dataplane.plugins).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import ClassVar, Protocol, TypeVar

from pydantic import Field

from gateway.config.root import GatewayConfig, GatewaySettings
from gateway.config.routes import RouteConfig
from gateway.config.section import Section

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# What pydantic and abc keep in every model class: not names a plugin adds.
_BOOKKEEPING = frozenset({"model_config", "_abc_impl"})


class PluginSpec(Protocol):
    """What the registry and the config know of a plugin class; the data plane asks for more
    (``upstream_headers``, ``build``, and instances that are chain members)."""

    # The registry key; by convention the module's name as well.
    name: ClassVar[str]
    priority: ClassVar[int]  # higher runs first (outermost)
    # The fields it owns, or None: a subclass of RouteConfig adding keys to each of routes[],
    # and a subclass of GatewaySettings adding top-level sections.
    route_fields: ClassVar[type[RouteConfig] | None]
    config_fields: ClassVar[type[GatewaySettings] | None]


PluginT = TypeVar("PluginT", bound=type[PluginSpec])
SettingsT = TypeVar("SettingsT", bound=GatewaySettings)
ModelT = TypeVar("ModelT", bound=Section)


def sections(config: GatewaySettings, kind: type[SettingsT]) -> SettingsT | None:
    """A plugin's typed view of its top-level sections in a config, or None if the config was
    composed without that plugin. (A route is narrowed with ``isinstance`` alone.)"""
    return config if isinstance(config, kind) else None


class Registry:
    """Plugin classes by name; the package's modules are imported (and so register) on first
    use."""

    def __init__(self, package: str) -> None:
        self.package = package
        self._plugins: dict[str, type[PluginSpec]] = {}
        self._discovered = False

    def register(self, plugin: PluginT) -> PluginT:
        """Add a plugin class (also a class decorator); registering it again changes nothing.

        Refused: a name taken by another class, and fields or validators that another plugin
        or the core already has (one would silently replace the other's).
        """
        known = self._plugins.get(plugin.name)
        if known is plugin:
            return plugin
        if known is not None:
            raise ValueError(
                f"plugin name {plugin.name!r} is taken by {known.__module__}.{known.__qualname__}"
            )
        if not _NAME.match(plugin.name):
            raise ValueError(f"plugin name {plugin.name!r} must be snake_case, 1-32 characters")
        claimed = _claims(plugin)
        for other in self._plugins.values():
            shared = claimed & _claims(other)
            if shared:
                names = ", ".join(sorted(name for _, name in shared))
                raise ValueError(f"plugin {plugin.name!r} and {other.name!r} both define {names}")
        self._plugins[plugin.name] = plugin
        return plugin

    def unregister(self, name: str) -> None:
        self._plugins.pop(name, None)

    @contextmanager
    def registered(self, *plugins: type[PluginSpec]) -> Iterator[None]:
        """Register plugins for the duration of a ``with`` block: a test's own plugin."""
        self.discover()
        added: list[str] = []
        try:
            for plugin in plugins:
                if plugin.name not in self._plugins:
                    added.append(plugin.name)
                self.register(plugin)
            yield
        finally:
            for name in added:
                self.unregister(name)

    def get(self, name: str) -> type[PluginSpec]:
        self.discover()
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(sorted(self._plugins)) or "none"
            raise KeyError(f"no plugin {name!r} (known: {known})") from None

    def plugins(self) -> tuple[type[PluginSpec], ...]:
        """Every plugin, in the order of their names."""
        self.discover()
        return tuple(self._plugins[name] for name in sorted(self._plugins))

    def discover(self) -> None:
        """Import every module of the package once; each registers its plugin as it loads."""
        if self._discovered:
            return
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__, prefix=f"{self.package}."):
            importlib.import_module(module.name)
        self._discovered = True

    def config_model(self) -> type[GatewayConfig]:
        """The model of gateway.yaml: the core's, with the fields of every plugin."""
        return _compose(self.plugins())


def _claims(plugin: type[PluginSpec]) -> set[tuple[str, str]]:
    """The names a plugin adds to the core's models, each with the model it adds it to."""
    claims = set()
    for model, core in (
        (plugin.route_fields, RouteConfig),
        (plugin.config_fields, GatewaySettings),
    ):
        if model is None:
            continue
        if not issubclass(model, core) or issubclass(model, GatewayConfig):
            raise TypeError(
                f"plugin {plugin.name!r}: its fields must subclass {core.__name__}"
                f" (got {model.__qualname__})"
            )
        names = {n for n in vars(model) if not n.startswith("__")} - _BOOKKEEPING
        names |= set(vars(model).get("__annotations__", {}))
        taken = sorted(n for n in names if n in core.model_fields or hasattr(core, n))
        if taken:
            raise ValueError(
                f"plugin {plugin.name!r} redefines {', '.join(taken)} of {core.__name__}"
            )
        claims |= {(core.__name__, n) for n in names}
    return claims


@functools.cache
def _compose(plugins: tuple[type[PluginSpec], ...]) -> type[GatewayConfig]:
    # pydantic orders fields from the last base to the first: bases in reverse put the core's
    # first and the plugins' after them in name order, and keep upstreams and routes last.
    routes = [p.route_fields for p in reversed(plugins) if p.route_fields is not None]
    settings = [p.config_fields for p in reversed(plugins) if p.config_fields is not None]
    route = _model(RouteConfig, (*routes, RouteConfig), {})
    # A type made at run time: mypy cannot check it as an annotation.
    routes_type = tuple[route, ...]  # type: ignore[valid-type]
    routes_field = Field((), description=GatewayConfig.model_fields["routes"].description)
    root = _model(
        GatewayConfig, (GatewayConfig, *settings), {"routes": (routes_type, routes_field)}
    )
    root.route_model = route
    return root


def _model(
    core: type[ModelT],
    bases: tuple[type[Section], ...],
    fields: Mapping[str, tuple[object, object]],
) -> type[ModelT]:
    """A subclass of core, named and placed as core, so that the JSON Schema reads the same."""

    def body(namespace: dict[str, object]) -> None:
        namespace["__module__"] = core.__module__
        namespace["__qualname__"] = core.__qualname__
        namespace["__annotations__"] = {name: kind for name, (kind, _) in fields.items()}
        namespace.update({name: default for name, (_, default) in fields.items()})

    model = types.new_class(core.__name__, bases, exec_body=body)
    if not issubclass(model, core):  # core is one of the bases
        raise TypeError(f"{model} does not extend {core.__name__}")
    return model


REGISTRY = Registry("plugins")
register = REGISTRY.register
unregister = REGISTRY.unregister
registered = REGISTRY.registered
get = REGISTRY.get
plugins = REGISTRY.plugins
discover = REGISTRY.discover
config_model = REGISTRY.config_model
