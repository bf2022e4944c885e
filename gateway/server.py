"""Process lifecycle: listeners, signals, graceful drain, and N workers on one port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from gateway.admin import build_admin_app, redacted_config
from gateway.app import DataPlane
from gateway.config import LoadedConfig
from gateway.demo_upstream import EchoServer
from gateway.http_server import EnvelopeServer
from gateway.log import flush_logs
from gateway.metrics import Metrics
from gateway.snapshot import PluginFactory, Snapshot

log = structlog.get_logger("gateway")

WORKER_ENV = "GATEWAY_WORKER"
# A worker tells its supervisor that its listener is open by writing a line to this fd.
READY_FD_ENV = "GATEWAY_READY_FD"


class ListenError(Exception):
    """A listener could not be opened; the message says which and why."""


class GatewayProcess:
    """One process's gateway: built-in backends, snapshot, data listener, admin listener."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        admin: bool = True,
        reuse_port: bool = False,
        plugins_for: PluginFactory | None = None,
    ) -> None:
        self.loaded = loaded
        self.metrics = Metrics()
        self._admin_enabled = admin
        self._reuse_port = reuse_port
        self._plugins_for = plugins_for
        self._echo: dict[str, EchoServer] = {}
        self._data_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.snapshot: Snapshot | None = None
        self.plane: DataPlane | None = None
        self.draining = False
        self.data_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        config = self.loaded.config
        builtin: dict[str, list[str]] = {}
        for name, upstream in config.upstreams.items():
            if upstream.builtin == "echo":
                echo = self._echo[name] = EchoServer()
                builtin[name] = [await echo.start()]
        snapshot = Snapshot(
            self.loaded, self.metrics, builtin_targets=builtin, plugins_for=self._plugins_for
        )
        self.snapshot = snapshot
        await snapshot.startup()
        self.metrics.set_config(self.loaded.digest)
        self.plane = DataPlane(snapshot, self.metrics, access_log_enabled=config.log.access_log)
        server = config.server
        data_server = EnvelopeServer(
            self.plane.handle,
            keepalive_timeout=server.idle_timeout,
            max_line_size=server.max_header_size,
            max_field_size=server.max_header_size,
            max_headers=server.max_headers,
            handler_cancellation=False,
            access_log=None,  # ours is written by the data plane, with more fields
        )
        self._data_runner = web.ServerRunner(data_server, shutdown_timeout=server.drain_timeout)
        await self._data_runner.setup()
        self.data_address = await listen(
            self._data_runner, config.listen.host, config.listen.port, "listen", self._reuse_port
        )
        if self._admin_enabled:
            app = build_admin_app(
                registry=self.metrics.registry,
                token=config.admin.token,
                readiness=self.readiness,
                config_view=self.config_view,
            )
            self._admin_runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
            await self._admin_runner.setup()
            self.admin_address = await listen(
                self._admin_runner, config.admin.host, config.admin.port, "admin", False
            )
        log.info(
            "gateway_started",
            listen=f"{self.data_address[0]}:{self.data_address[1]}",
            admin=f"{self.admin_address[0]}:{self.admin_address[1]}"
            if self._admin_enabled
            else None,
            config=self.loaded.source,
            config_hash=self.loaded.digest,
            pid=os.getpid(),
        )

    def readiness(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "ready",
            "config_hash": self.loaded.digest,
        }

    def config_view(self) -> dict[str, Any]:
        return redacted_config(self.loaded)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), release all."""
        self.draining = True
        log.info("gateway_draining", drain_timeout=self.loaded.config.server.drain_timeout)
        if self._data_runner is not None:
            await self._data_runner.cleanup()
        if self.snapshot is not None:
            await self.snapshot.shutdown()
        for echo in self._echo.values():
            await echo.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        log.info("gateway_stopped")
        flush_logs()


async def listen(
    runner: web.BaseRunner, host: str, port: int, field: str, reuse_port: bool
) -> tuple[str, int]:
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(f"{field}: cannot listen on {host}:{port}: {exc.strerror}") from None
    address = runner.addresses[-1]
    return str(address[0]), int(address[1])


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def run_gateway(loaded: LoadedConfig, *, worker: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    if loaded.config.workers > 1 and not worker:
        from gateway.supervisor import supervise

        return run_loop(supervise(loaded))
    return run_loop(_serve(loaded, worker=worker))


def _report_listening() -> None:
    fd = os.environ.get(READY_FD_ENV)
    if fd and fd.isdigit():
        with contextlib.suppress(OSError), os.fdopen(int(fd), "wb") as pipe:
            pipe.write(b"listening\n")


async def _serve(loaded: LoadedConfig, *, worker: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    process = GatewayProcess(loaded, admin=not worker, reuse_port=worker)
    try:
        await process.start()
    except ListenError as exc:
        log.error("gateway_start_failed", error=str(exc))
        await process.stop()
        return 1
    _report_listening()
    await stop.wait()
    await process.stop()
    return 0
