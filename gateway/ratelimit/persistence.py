"""Local limits survive a restart: saved to the SQLite store every few seconds and at shutdown.

Without this a restart would hand every org a fresh monthly quota. A crash loses at most the
last few seconds of counting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.ratelimit.backends import LocalLimits
from gateway.store import StoreError
from gateway.store.base import LimitState
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.ratelimit")


class LocalLimitsPersistence:
    INTERVAL = 5.0

    def __init__(self, limits: LocalLimits, store: LimitState, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.store = store
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.limits.restore(await self.store.load_limit_state(int(self.clock() * 1_000_000)))
        self._task = asyncio.create_task(self._save_periodically(), name="gateway-limit-state")

    async def shutdown(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.save()

    async def save(self) -> None:
        try:
            await self.store.save_limit_state(
                self.limits.export_changes(), int(self.clock() * 1_000_000)
            )
        except StoreError as exc:
            log.warning("limit_state_not_saved", error=str(exc))

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL)
            await self.save()
