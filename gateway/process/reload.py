"""Config reloads without a restart: what may change live, and the opt-in file watch."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from gateway.config import ConfigError, GatewayConfig, LoadedConfig, load_config
from gateway.config.document import MAX_FILE_SIZE
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.reload")

# Sections the running process was built from: listeners, the store, worker count, timeouts of
# the HTTP server, key hashing, logging, scope expansion and the webhook dispatcher. Changing
# them needs a restart.
RESTART_ONLY = (
    "listen",
    "admin",
    "workers",
    "store",
    "server",
    "keys",
    "log",
    "scopes",
    "reload",
    "webhooks",
)


def restart_needed(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    return [field for field in RESTART_ONLY if getattr(old, field) != getattr(new, field)]


def read_for_reload(current: LoadedConfig) -> tuple[LoadedConfig | None, list[str]]:
    """The config file again, if it is valid and changes only what a reload may change;
    else None and every problem."""
    try:
        loaded = load_config(current.source)
    except ConfigError as exc:
        return None, exc.problems
    changed = restart_needed(current.config, loaded.config)
    if changed:
        return None, [f"{field}: changing this needs a restart" for field in changed]
    return loaded, []


class ConfigWatcher:
    """Polls the config file; a change of content triggers a reload (a bad file only logs)."""

    def __init__(
        self, path: str, interval: float, reload: Callable[[], Awaitable[list[str]]]
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.reload = reload
        self._task: asyncio.Task[None] | None = None
        self._digest = self._read()

    def _read(self) -> str | None:
        try:
            with self.path.open("rb") as file:  # bounded as the loader reads it: no device drains
                return hashlib.sha256(file.read(MAX_FILE_SIZE + 1)).hexdigest()
        except OSError:
            return None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="gateway-config-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            digest = self._read()
            if digest is not None and digest != self._digest:
                self._digest = digest
                log.info("config_changed", path=str(self.path))
                await self.reload()
