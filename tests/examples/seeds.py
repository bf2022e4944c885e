"""An example config of config/examples/, started as shipped but for what a test must own: its
listeners on free ports, the store the test gives, and the backend the test runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ADMIN_TOKEN, GatewayFactory, RunningGateway

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def example(name: str) -> dict[str, Any]:
    """The example file as written (its ${VAR:-default}s are filled in when the gateway loads
    it)."""
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return loaded


async def start_example(
    gateway_factory: GatewayFactory,
    name: str,
    *,
    store: dict[str, Any],
    backend: str,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> RunningGateway:
    """The example on the test's store, every upstream pointed at ``backend``; ``overrides``
    replace top-level sections, or keys of them where both are mappings (webhooks: {...})."""
    config = example(name)
    config["listen"] = {"host": "127.0.0.1", "port": 0}
    config["admin"] = {"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN}
    config["store"] = store
    config["workers"] = 1  # one process here; the shipped count is for production
    for upstream in config["upstreams"].values():
        upstream["targets"] = [backend]
    for key, value in overrides.items():
        current = config.get(key)
        config[key] = {**current, **value} if isinstance(current, dict) else value
    return await gateway_factory(config, clock=clock)
