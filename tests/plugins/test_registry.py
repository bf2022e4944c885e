"""The plugin registry: the shipped plugins found by name, and plugins defined here (each with
its own config on routes[]) registered for one test and served through a real gateway, without
a line of the core knowing them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
import yaml
from aiohttp import web
from pydantic import Field

from gateway.config import (
    ConfigError,
    GatewayConfig,
    GatewaySettings,
    RouteConfig,
    Section,
    load_config,
    parse_config,
)
from gateway.config.registry import get, plugins, register, registered
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from gateway.process.gateway import GatewayProcess
from plugins.cors import CorsPlugin
from tests.conftest import GatewayFactory, Upstream, make_config

SHIPPED = ["auth", "cors", "deprecation", "idempotency", "rate_limit"]


class MarkConfig(Section):
    value: str = Field(description="What the X-Mark response header says.")


class StampRoute(RouteConfig):
    stamp: MarkConfig | None = Field(None, description="Mark this route's answers, before auth.")


class SealRoute(RouteConfig):
    seal: MarkConfig | None = Field(None, description="Mark this route's answers, after auth.")


class _Mark:
    """Adds ``X-Mark: <value>`` to the answers of the routes that configure it; records its
    startups and shutdowns."""

    upstream_headers: ClassVar[tuple[str, ...]] = ()
    config_fields: ClassVar[type[GatewaySettings] | None] = None
    events: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, value: str) -> None:
        self.value = value

    async def startup(self) -> None:
        _Mark.events.append(("startup", self.value))

    async def shutdown(self) -> None:
        _Mark.events.append(("shutdown", self.value))

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        ctx.response_headers.append(("X-Mark", self.value))
        return await call_next(ctx)


class StampPlugin(_Mark):
    name: ClassVar[str] = "stamp"
    priority: ClassVar[int] = 1200  # outside auth (1000): a refused key still gets the mark
    route_fields: ClassVar[type[RouteConfig] | None] = StampRoute

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> StampPlugin | None:
        if not isinstance(route, StampRoute) or route.stamp is None:
            return None
        return cls(route.stamp.value)


class SealPlugin(_Mark):
    name: ClassVar[str] = "seal"
    priority: ClassVar[int] = 500  # inside auth and every shipped plugin
    route_fields: ClassVar[type[RouteConfig] | None] = SealRoute

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> SealPlugin | None:
        if not isinstance(route, SealRoute) or route.seal is None:
            return None
        return cls(route.seal.value)


@pytest.fixture
def marks() -> Iterator[list[tuple[str, str]]]:
    """The test plugins, registered for this test only; their startup and shutdown events."""
    _Mark.events.clear()
    with registered(StampPlugin, SealPlugin):
        yield _Mark.events


def test_discovery_finds_the_shipped_plugins_by_their_module_names() -> None:
    # A fresh interpreter: nothing has imported a plugin before the registry looks.
    script = (
        "import sys\n"
        "from gateway.config.registry import plugins\n"
        "assert not [m for m in sys.modules if m.startswith('plugins.')]\n"
        "print(' '.join(f'{p.name}={p.__module__}' for p in plugins()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"{name}=plugins.{name}" for name in SHIPPED]


def test_plugins_are_looked_up_by_name() -> None:
    assert [p.name for p in plugins()] == SHIPPED
    assert get("cors") is CorsPlugin
    with pytest.raises(KeyError, match="no plugin 'stmap' \\(known: auth, cors, deprecation"):
        get("stmap")
    with registered(StampPlugin):
        assert get("stamp") is StampPlugin
        assert [p.name for p in plugins()] == sorted([*SHIPPED, "stamp"])
    assert [p.name for p in plugins()] == SHIPPED


def test_a_taken_name_or_field_is_refused() -> None:
    class Impostor(StampPlugin):
        name: ClassVar[str] = "cors"

    class Rival(StampPlugin):
        name: ClassVar[str] = "rival"

    class CorsAgain(RouteConfig):
        cors: MarkConfig | None = None

    class Usurper(StampPlugin):
        name: ClassVar[str] = "usurper"
        route_fields: ClassVar[type[RouteConfig] | None] = CorsAgain

    class AuthAgain(RouteConfig):
        auth: str = "maybe"  # type: ignore[assignment]  # the point: a core field redefined

    class Overrider(StampPlugin):
        name: ClassVar[str] = "overrider"
        route_fields: ClassVar[type[RouteConfig] | None] = AuthAgain

    with pytest.raises(ValueError, match=r"'cors' is taken by plugins\.cors\.CorsPlugin"):
        register(Impostor)
    with pytest.raises(ValueError, match="plugin 'usurper' and 'cors' both define cors"):
        register(Usurper)
    with pytest.raises(ValueError, match="plugin 'overrider' redefines auth of RouteConfig"):
        register(Overrider)
    with registered(StampPlugin), pytest.raises(ValueError, match="both define stamp"):
        register(Rival)
    assert [p.name for p in plugins()] == SHIPPED


def test_a_plugins_config_is_validated_with_the_usual_paths_and_hints(
    marks: list[tuple[str, str]],
) -> None:
    def problems(route: dict[str, object]) -> list[str]:
        config = {"upstreams": {"a": {"targets": ["http://127.0.0.1:1"]}}, "routes": [route]}
        with pytest.raises(ConfigError) as info:
            parse_config(yaml.safe_dump(config).encode(), source="t", env={})
        return info.value.problems

    route = {"path": "/x", "upstream": "a"}
    assert problems({**route, "stamp": {"value": "v", "colour": "red"}}) == [
        "routes[0].stamp.colour: unknown key (known: value)"
    ]
    assert problems({**route, "stamp": {"valeu": "v"}}) == [
        "routes[0].stamp.value: required",
        "routes[0].stamp.valeu: unknown key (did you mean 'value'?)",
    ]
    assert problems({**route, "stmap": {"value": "v"}}) == [
        "routes[0].stmap: unknown key (did you mean 'stamp'?)"
    ]
    assert problems({**route, "seal": "v"}) == ["routes[0].seal: must be a mapping (got 'v')"]
    config = {
        "upstreams": {"a": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [{**route, "stamp": {"value": "v"}}],
    }
    [parsed] = parse_config(yaml.safe_dump(config).encode(), source="t", env={}).config.routes
    assert isinstance(parsed, StampRoute)
    assert isinstance(parsed, SealRoute)  # one route model, with every plugin's fields
    assert (parsed.stamp, parsed.seal) == (MarkConfig(value="v"), None)


def test_the_shipped_plugins_own_route_checks_read_the_core_fields() -> None:
    def problems(**route: object) -> list[str]:
        config = {
            "upstreams": {"a": {"targets": ["http://127.0.0.1:1"]}},
            "routes": [{"path": "/x", "upstream": "a", **route}],
        }
        with pytest.raises(ConfigError) as info:
            parse_config(yaml.safe_dump(config).encode(), source="t", env={})
        return info.value.problems

    limit = {"name": "export", "requests": 1, "per": "1m"}
    assert problems(auth="none", rate_limits=[limit]) == [
        "routes[0].rate_limits: limits count per key or org; they need auth"
    ]
    assert problems(rate_limits=[limit, limit]) == [
        "routes[0].rate_limits: each limit of a route needs its own name"
    ]
    assert problems(auth="none", idempotency="required") == [
        "routes[0].idempotency: records are kept per org; it needs auth"
    ]
    assert problems(auth="none", scopes=["read"]) == [
        "routes[0].scopes: a route with auth: none cannot require scopes"
    ]


def test_without_the_plugin_its_key_is_unknown() -> None:
    config = {
        "upstreams": {"a": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [{"path": "/x", "upstream": "a", "stamp": {"value": "v"}}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(config).encode(), source="t", env={})
    [problem] = info.value.problems
    assert problem.startswith("routes[0].stamp: unknown key")


async def test_a_registered_plugin_marks_the_routes_that_configure_it_and_no_others(
    marks: list[tuple[str, str]], gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [
                {"path": "/stamped", "upstream": "app", "stamp": {"value": "s"}},
                {"path": "/plain", "upstream": "app"},
            ],
        )
    )
    async with gw.session.get(f"{gw.url}/stamped") as r:
        assert r.status == 200
        assert r.headers.getall("X-Mark") == ["s"]
    async with gw.session.get(f"{gw.url}/plain") as r:
        assert r.status == 200
        assert "X-Mark" not in r.headers
    assert len(upstream.seen) == 2


async def test_priorities_order_the_chain_among_the_shipped_plugins(
    marks: list[tuple[str, str]], gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    both = {"stamp": {"value": "outer"}, "seal": {"value": "inner"}}
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [
                {"path": "/open", "upstream": "app", **both},
                {"path": "/keyed", "upstream": "app", "auth": "key", **both},
            ],
        )
    )
    async with gw.session.get(f"{gw.url}/open") as r:
        assert r.status == 200
        assert r.headers.getall("X-Mark") == ["outer", "inner"]  # higher priority runs first
    # auth (1000) refuses the request between the two: only the outer mark was added.
    async with gw.session.get(f"{gw.url}/keyed") as r:
        assert r.status == 401
        assert r.headers.getall("X-Mark") == ["outer"]


async def test_startup_and_shutdown_run_once_per_snapshot(
    marks: list[tuple[str, str]], upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"

    def write(value: str) -> None:
        config = make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/x", "upstream": "app", "stamp": {"value": value}}],
            store={"path": str(tmp_path / "state.db")},
            admin={"token_file": str(tmp_path / "admin-token")},
        )
        path.write_text(yaml.safe_dump(config))

    write("first")
    process = GatewayProcess(load_config(path))
    await process.start()
    try:
        assert marks == [("startup", "first")]
        write("second")
        assert await process.reload() == []
        # The new snapshot starts before the old one leaves; its answers carry the new mark.
        assert marks[:2] == [("startup", "first"), ("startup", "second")]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{process.data_address[1]}/x") as r,
        ):
            assert r.headers.getall("X-Mark") == ["second"]
    finally:
        await process.stop()
    assert sorted(marks) == [
        ("shutdown", "first"),
        ("shutdown", "second"),
        ("startup", "first"),
        ("startup", "second"),
    ]
